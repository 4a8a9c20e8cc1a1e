"""Python steps for the step-log tests: they print and log, and one fails its first attempt."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("shop.orders")


def flaky(path: str, token: str = "") -> dict[str, int]:
    """Fails its first attempt (a file counts them), succeeds the second."""
    marker = Path(path)
    attempt = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(attempt))
    print(f"attempt {attempt} starts <b>bold</b>")
    print(f"using {token} on https://bob:hunter2@example.com/x")
    log.info("order %d checked", attempt)
    log.debug("not kept at the default level")
    if attempt == 1:
        print("about to fail", file=sys.stderr)
        raise RuntimeError("the first attempt fails")
    log.warning("second time lucky")
    return {"attempt": attempt}


def silent() -> int:
    return 7
