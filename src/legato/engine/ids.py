"""Run ids: 32 hex digits, time-ordered (48-bit milliseconds, then the marker `f`, then 76 random or
derived bits).

Every id the engine makes carries the marker in its 13th digit (RESERVED_AT): a caller may choose a
run's id, but not one of that form, so it can never take an id the engine derives (a scheduled
interval's, a sub-workflow run's) before the engine does. A UUID's hex never has it (that digit is
the UUID version). Ids made before the marker existed stay valid; they were all taken when made.

Ordered ids make "newest first" an index scan and keep inserts at the end of the B-tree; the same 32 hex
digits serve as the W3C trace id of the run's calls. Ids order and trace; they are not secrets, so
the cheap PRNG serves (a syscall per id showed in profiles).
"""

from __future__ import annotations

import hashlib
import random
import time

RESERVED_AT = 12  # the digit after the 48-bit milliseconds
MARKER = "f"


def reserved(run_id: str) -> bool:
    """Is this id of the form only the engine makes?"""
    return run_id[RESERVED_AT : RESERVED_AT + 1] == MARKER


def new_run_id() -> str:
    ms = int(time.time() * 1000) & 0xFFFFFFFFFFFF
    return f"{ms:012x}{MARKER}{random.getrandbits(76):019x}"


def child_run_id(parent: str, step: str, attempt: int, started_at: float) -> str:
    """The id of the run a sub-workflow step starts: time-ordered like any id, and the same every
    time for one attempt, which makes starting it idempotent."""
    ms = int(started_at * 1000) & 0xFFFFFFFFFFFF
    digest = hashlib.sha256(f"{parent}:{step}:{attempt}".encode()).hexdigest()
    return f"{ms:012x}{MARKER}{digest[:19]}"


def result_key(run_id: str, step: str, attempt: int) -> str:
    """The object key a polled service writes an attempt's result to: unique per step of a run."""
    return f"{run_id}/{step}/{attempt}.json"


def traceparent(run_id: str) -> str:
    """A W3C traceparent: the run is the trace, each attempt a new span."""
    return f"00-{run_id}-{random.getrandbits(64) or 1:016x}-01"


def scheduled_run_id(workflow: str, interval_start: float) -> str:
    """The id of the run for one interval of a schedule: the same in every process and after any
    restart, so an interval can never produce two runs. Time-ordered by the interval's start."""
    ms = int(interval_start * 1000) & 0xFFFFFFFFFFFF
    digest = hashlib.sha256(f"schedule:{workflow}:{interval_start!r}".encode()).hexdigest()
    return f"{ms:012x}{MARKER}{digest[:19]}"
