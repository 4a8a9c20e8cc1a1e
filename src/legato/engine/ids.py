"""Run ids: 32 hex digits, time-ordered (48-bit milliseconds, then 80 random bits).

Ordered ids make "newest first" an index scan and keep inserts at the end of the B-tree; the same 32 hex
digits serve as the W3C trace id of the run's calls.
"""

from __future__ import annotations

import os
import time


def new_run_id() -> str:
    ms = int(time.time() * 1000) & 0xFFFFFFFFFFFF
    return f"{ms:012x}{os.urandom(10).hex()}"


def traceparent(run_id: str) -> str:
    """A W3C traceparent: the run is the trace, each attempt a new span."""
    return f"00-{run_id}-{os.urandom(8).hex()}-01"
