"""How a decider bug is logged: one line naming the run, the event and the error, then only the last
frames of the traceback. A RecursionError's full traceback was ~2,000 lines per run, which buried
the log (and every run of the workflow wrote one)."""

from __future__ import annotations

import logging
import traceback

from legato.engine.state import Event

log = logging.getLogger("legato.engine")
FRAMES = 8  # of the traceback, the innermost: where the decider broke
MESSAGE_CHARS = 500


def log_decide_failure(run_id: str, event: Event, exc: BaseException) -> None:
    step = getattr(event, "step", None)
    what = type(event).__name__ + (f" of step {step!r}" if step is not None else "")
    message = str(exc)
    if len(message) > MESSAGE_CHARS:
        message = message[:MESSAGE_CHARS] + "..."
    frames = traceback.format_list(traceback.extract_tb(exc.__traceback__, limit=-FRAMES))
    log.error(
        "deciding %s for run %s failed: %s: %s (the run fails with kind internal); "
        "innermost frames:\n%s",
        what,
        run_id,
        type(exc).__name__,
        message,
        "".join(frames).rstrip(),
    )
