"""Captures what a Python step prints and logs, per attempt, and nothing else.

Several steps run at once, on worker threads and as coroutines on the loop, and the engine logs in
between. So a capture is routed by a context variable rather than by swapping `sys.stdout` for each
step: `sys.stdout`/`sys.stderr` become, once, proxies that pass every write through and also hand it
to the buffer of the step whose context wrote it; one handler on the root logger does the same for
`logging` records. Code outside a step (the engine, the server) has no buffer in its context, so
nothing of it is kept. A step's worker thread runs in a copy of the step's context.

Not captured: threads a step starts itself (a new thread does not inherit the context; copy it with
`contextvars.copy_context().run` to have them captured), subprocesses, `os.system` and writes to the
file descriptors 1 and 2 (they bypass sys.stdout). A step that replaces sys.stdout or sys.stderr
(without putting it back) has the proxies put back when its attempt ends (`reinstate`), so it cannot
take over the process's output.

A buffer is bounded (lines and bytes per attempt): past the bound, lines are counted and dropped, and
the end says how much was cut. A failed step's traceback is kept apart from that bound, so a step
that printed a lot still shows why it failed.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, TextIO

from legato.engine.outcome import LogLine
from legato.masking import mask_text

MAX_LINES = 1000
MAX_BYTES = 64 * 1024
MAX_LINE = 8 * 1024  # one line longer than this is cut
MAX_TRACEBACK = 16 * 1024
# The engine's own loggers: never a step's lines, even if one logged from a step's context.
_ENGINE_LOGGERS = ("legato.engine", "legato.store", "legato.server", "legato.notify")
_ENGINE_NAMES = frozenset({"legato", "legato.scheduler", "legato.transports"})

current: contextvars.ContextVar[StepBuffer | None] = contextvars.ContextVar(
    "legato_step_logs", default=None
)


def _level_from_env() -> int:
    name = os.environ.get("LEGATO_STEP_LOG_LEVEL", "INFO").strip().upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


class StepBuffer:
    """The lines of one attempt, in order, within the bounds."""

    __slots__ = (
        "_lock",
        "_partial",
        "closed",
        "cut_bytes",
        "cut_lines",
        "lines",
        "max_bytes",
        "max_lines",
        "size",
    )

    def __init__(self, max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES) -> None:
        self.lines: list[LogLine] = []
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.size = 0
        self.cut_lines = 0
        self.cut_bytes = 0
        self.closed = False
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, level: str, source: str, message: str, at: float | None = None) -> None:
        if self.cut_lines:  # full: from the first line cut on, lines are only counted
            self._count(message, 1)
            return
        if len(message) > MAX_LINE:
            cut = len(message) - MAX_LINE
            message = f"{message[:MAX_LINE]} [truncated {cut} bytes]"
        size = len(message.encode("utf-8", "replace"))
        with self._lock:
            if self.closed:
                return
            if len(self.lines) >= self.max_lines or self.size + size > self.max_bytes:
                self.cut_lines += 1
                self.cut_bytes += size
                return
            self.size += size
            self.lines.append((time.time() if at is None else at, level, source, message))

    def _count(self, text: str, lines: int, newlines: int = 0) -> None:
        with self._lock:
            self.cut_lines += lines
            self.cut_bytes += len(text) - newlines  # characters: close enough, and cheap

    def write(self, stream: str, text: str) -> None:
        """A piece of a stream: whole lines are kept as they end, the rest waits for its end.
        Once the buffer is full, a write is only counted (a print loop stays cheap)."""
        if self.cut_lines:
            newlines = text.count("\n")
            self._count(text, newlines, newlines)
            return
        with self._lock:
            text = self._partial.pop(stream, "") + text
            *whole, rest = text.split("\n")
            if rest:
                self._partial[stream] = rest[-MAX_LINE * 2 :]
        level = "INFO" if stream == "stdout" else "WARNING"
        for line in whole:
            self.add(level, stream, line.rstrip("\r"))

    def finish(self, error: BaseException | None = None) -> tuple[LogLine, ...]:
        """The attempt's lines, masked, with a truncation mark and the traceback of `error`."""
        if not self.lines and not self._partial and error is None and not self.cut_lines:
            self.closed = True
            return ()  # most steps: nothing to keep
        for stream, rest in list(self._partial.items()):
            self.add("INFO" if stream == "stdout" else "WARNING", stream, rest)
        self._partial.clear()
        with self._lock:
            self.closed = True
            lines = [(t, lv, src, mask_text(msg)) for t, lv, src, msg in self.lines]
        if self.cut_lines:
            mark = f"[truncated {self.cut_bytes} bytes, {self.cut_lines} lines]"
            lines.append((time.time(), "WARNING", "legato", mark))
        if error is not None:
            text = "".join(traceback.format_exception(error)).rstrip("\n")
            if len(text) > MAX_TRACEBACK:  # the end says where it failed: keep that
                cut = len(text) - MAX_TRACEBACK
                text = f"[truncated {cut} bytes]\n{text[-MAX_TRACEBACK:]}"
            lines.append((time.time(), "ERROR", "traceback", mask_text(text)))
        return tuple(lines)


class _StreamProxy:
    """Stands for sys.stdout or sys.stderr: writes go where they went, and to the step's buffer."""

    def __init__(self, name: str, target: TextIO) -> None:
        self._name, self._target = name, target

    def write(self, text: str) -> int:
        buffer = current.get()
        if buffer is not None and isinstance(text, str):
            buffer.write(self._name, text)
        return self._target.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        buffer = current.get()
        if buffer is None or record.levelno < self.level:
            return
        name = record.name
        if name in _ENGINE_NAMES or name.startswith(_ENGINE_LOGGERS):
            return
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
            buffer.add(record.levelname, name, message.rstrip("\n"), record.created)
        except Exception:  # a record that cannot format is the step's problem, not the engine's
            self.handleError(record)


class _Fallback(logging.Handler):
    """What logging does with a record no handler takes (WARNING and up to stderr), needed once the
    root has a handler of ours: it writes past the proxy, so a step's warning is kept once."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = getattr(sys.stderr, "_target", sys.stderr)
            stream.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


class _AtLeast(logging.Filter):
    """Keeps a root handler's output as it was after the root level was lowered for captures: a
    record passes if its logger's own level (set on it or a parent below the root) let it through
    before, or else if it reaches the root's former level."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name) if record.name else None
        while logger is not None and logger.parent is not None:  # stop at the root
            if logger.level:
                return record.levelno >= logger.level
            logger = logger.parent
        return record.levelno >= self.level


_handler: _Handler | None = None
_install_lock = threading.Lock()


def reinstate(before: tuple[Any, Any]) -> None:
    """Put back the streams that were there when an attempt began (the proxies), should the step
    have replaced them: what it put there is dropped, with whatever it had piled up."""
    if sys.stdout is not before[0]:
        sys.stdout = before[0]
    if sys.stderr is not before[1]:
        sys.stderr = before[1]


def install() -> None:
    """Route prints and log records to step buffers (idempotent; cheap once done).

    Checked at each step: a test harness may have put its own sys.stdout back since."""
    global _handler
    if (
        _handler is not None
        and isinstance(sys.stdout, _StreamProxy)
        and isinstance(sys.stderr, _StreamProxy)
    ):
        return
    with _install_lock:
        if not isinstance(sys.stdout, _StreamProxy):
            sys.stdout = _StreamProxy("stdout", sys.stdout)
        if not isinstance(sys.stderr, _StreamProxy):
            sys.stderr = _StreamProxy("stderr", sys.stderr)
        if _handler is None:
            level = _level_from_env()
            root = logging.getLogger()
            if not root.handlers:
                root.addHandler(_Fallback(logging.WARNING))
            if root.getEffectiveLevel() > level:
                # Records below the root's level are never made; lower it, and keep what the
                # process's handlers show as it was.
                for h in root.handlers:
                    h.addFilter(_AtLeast(root.getEffectiveLevel()))
                root.setLevel(level)
            _handler = _Handler(level)
            root.addHandler(_handler)
