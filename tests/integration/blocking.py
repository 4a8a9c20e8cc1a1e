"""Plain (blocking) functions that tests let a server's Python steps call."""

from __future__ import annotations

import time


def nap(seconds: float) -> dict[str, float]:
    time.sleep(seconds)
    return {"slept": seconds}
