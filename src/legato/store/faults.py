"""Store faults: a database that is down, a disk that is full, a call that does not come back.

These are not bugs, and each request that meets one must not log a traceback: the API answers 503 with
Retry-After (see server/errors.py), the engine's loops back off and go on, and the log says so once per
kind every 10 s with a count. `bounded` keeps a request from waiting on the store for more than a few
seconds (`REQUEST_LIMIT`, set by the server for the requests it handles).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import inspect
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from legato.errors import LegatoError

T = TypeVar("T")
log = logging.getLogger("legato.store")

# How long a request may wait on one store call (or on the commit of what it decided) before it is
# answered 503. None outside a request: the engine's own loops wait as long as a call takes.


ENV_PROBLEMS: list[str] = []  # bad settings below: `legato serve|worker` refuses to start on them


def _seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds from the environment. A bad one is kept in
    ENV_PROBLEMS for the server to refuse with a clear message (read at import, raising here would
    be a traceback; kept, nan or 0 made every call fail)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e9:  # also refuses nan and inf
        ENV_PROBLEMS.append(f"{name} must be a number of seconds above 0, not {raw!r}")
        return default
    return value


STORE_TIMEOUT = _seconds("LEGATO_STORE_TIMEOUT", 3.0)
REQUEST_LIMIT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "legato_request_limit", default=None
)
RETRY_AFTER = 5  # seconds, the Retry-After of a 503
# An operator's action over many runs (a tree's cancel, a bulk cancel or retry) may take longer than
# one store call: a request waits for it up to this bound instead, and it is never cut short.
BULK_TIMEOUT = _seconds("LEGATO_BULK_TIMEOUT", 60.0)
LONG_CALLS = frozenset({"cancel_runs", "retry_runs"})  # store methods bounded by `lasting`

# PostgreSQL SQLSTATE classes and codes that mean "not now" rather than "wrong": connection
# exceptions, insufficient resources (disk full, out of memory, too many connections), operator
# intervention (shutdown, cannot connect now), and a read-only standby.
_PG_CLASSES = ("08", "53", "57P")
_PG_CODES = ("25006", "58030")
_NETWORK_ERRNOS = (
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
)


class StoreUnavailable(LegatoError):
    """The store cannot be read or written just now; the same call may work later."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"the database is unavailable ({kind}): {detail}")
        self.kind = kind
        self.detail = detail


class Unfinished(LegatoError):
    """An action over many runs outlived its request's bound: it goes on, and may still commit."""

    def __init__(self, limit: float) -> None:
        super().__init__(
            f"the operation did not finish within {limit:g} s; it goes on and may still "
            "complete: look at the runs again later"
        )


def store_fault(exc: BaseException) -> str | None:
    """The kind of store trouble `exc` is ("connection", "disk full", "disk", "timeout"), or None
    when it is something else (a bug, bad input), which keeps its traceback."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:  # a LegatoError raised from the driver's error counts
        kind = _kind(cur)
        if kind is not None:
            return kind
        cur = cur.__cause__
        seen += 1
    return None


def _kind(exc: BaseException) -> str | None:
    if isinstance(exc, StoreUnavailable):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "full" in text:
            return "disk full"
        if "disk i/o" in text or "unable to open" in text or "readonly" in text:
            return "disk"
        if "locked" in text or "busy" in text:
            return "busy"
        return None
    if isinstance(exc, ConnectionError) or (
        isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS
    ):
        return "connection"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if isinstance(exc, OSError) and exc.errno == errno.EIO:
        return "disk"
    module = type(exc).__module__
    if module.startswith("asyncpg"):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state.startswith(_PG_CLASSES) or state in _PG_CODES:
            return "disk full" if state == "53100" else "connection"
        name = type(exc).__name__
        # "connection is closed", "connection was closed in the middle of operation", a pool closing.
        if name in ("InterfaceError", "ConnectionDoesNotExistError", "InternalClientError"):
            return "connection"
    return None


def unavailable(exc: BaseException) -> StoreUnavailable | None:
    """`exc` as a StoreUnavailable if it is a store fault, else None."""
    if isinstance(exc, StoreUnavailable):
        return exc
    kind = store_fault(exc)
    if kind is None:
        return None
    text = str(exc) or type(exc).__name__
    return StoreUnavailable(kind, text)


async def bounded(work: Awaitable[T]) -> T:
    """Await `work`, but inside a request no longer than the request's limit: past it, or on a
    store fault, raise StoreUnavailable."""
    limit = REQUEST_LIMIT.get()
    try:
        if limit is None:
            return await work
        async with asyncio.timeout(limit):
            return await work
    except TimeoutError:
        if limit is None:
            raise
        raise StoreUnavailable("timeout", f"no answer within {limit:g} s") from None


_LASTING: set[asyncio.Task[Any]] = set()  # actions under way in a request (kept from the GC)
_UNWATCHED: set[asyncio.Task[Any]] = set()  # those whose request gave up


async def lasting(work: Coroutine[Any, Any, T]) -> T:
    """Await an action over many runs to its end. Inside a request it is bounded by BULK_TIMEOUT
    (not the store timeout) and goes on in its own task when the request gives up (its bound passed,
    its client left): a transaction cut halfway would cancel nothing, and the request was told so
    (Unfinished)."""
    if REQUEST_LIMIT.get() is None:
        return await work
    task = asyncio.ensure_future(work)
    _LASTING.add(task)
    task.add_done_callback(_ended)
    try:
        async with asyncio.timeout(BULK_TIMEOUT):
            return await asyncio.shield(task)
    except BaseException as exc:
        if not task.done():
            _UNWATCHED.add(task)  # nobody hears of its end but the log
        if isinstance(exc, TimeoutError):
            raise Unfinished(BULK_TIMEOUT) from None
        raise


def _ended(task: asyncio.Task[Any]) -> None:
    _LASTING.discard(task)
    exc = None if task.cancelled() else task.exception()
    if task in _UNWATCHED:
        _UNWATCHED.discard(task)
        if exc is not None:
            failed(log, exc, "an action over many runs, given up by its request, failed")
        else:
            log.info("an action over many runs, given up by its request, completed")


class Bounded:
    """A store whose coroutine methods are `bounded`: its attributes are the store's own."""

    def __init__(self, store: Any) -> None:
        object.__setattr__(self, "_store", store)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._store, name)
        # Opening and closing keep their own errors: a store that cannot open is not "unavailable".
        if inspect.iscoroutinefunction(value) and name not in ("open", "close"):

            async def call(*args: Any, **kwargs: Any) -> Any:
                try:
                    if name in LONG_CALLS:  # its caller bounds it (see `lasting`)
                        return await value(*args, **kwargs)
                    return await bounded(value(*args, **kwargs))
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    fault = unavailable(exc)
                    if fault is None:
                        raise
                    raise fault from exc

            call.__name__ = name
            object.__setattr__(self, name, call)  # made once: later look-ups find it here
            return call
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__.pop(name, None)  # a wrapper made for the attribute's old value
        setattr(self._store, name, value)


def fault_types() -> tuple[type[BaseException], ...]:
    """The exception classes a store fault can come as (asyncpg's only if it is installed)."""
    types: list[type[BaseException]] = [StoreUnavailable, OSError, sqlite3.Error]
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - PostgreSQL support is optional
        return tuple(types)
    return (*types, asyncpg.PostgresError, asyncpg.InterfaceError)


class Trouble:
    """Says each kind of store trouble once per `every` seconds, with how often it happened:
    `store unavailable: <what> (17 times in 10 s)`, not a traceback per failure."""

    def __init__(
        self,
        logger: logging.Logger = log,
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger
        self.every = every
        self.clock = clock
        self._since: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self.total = 0

    def report(self, exc: BaseException, what: str = "") -> None:
        error = unavailable(exc)
        kind = error.kind if error is not None else type(exc).__name__
        detail = error.detail if error is not None else str(exc)
        self.total += 1
        now = self.clock()
        since = self._since.get(kind)
        if since is not None and now - since < self.every:
            self._count[kind] += 1
            return
        count = self._count.get(kind, 0)
        self._since[kind] = now
        self._count[kind] = 0
        where = f"{what}: " if what else ""
        if since is None or count == 0:
            self.log.warning("store unavailable: %s%s (%s)", where, detail, kind)
        else:
            self.log.warning(
                "store unavailable: %s%s (%s; %d times in %.0f s)",
                where,
                detail,
                kind,
                count + 1,
                now - since,
            )

    def recovered(self) -> None:
        """The store answered again: say so once, and count anew."""
        if self._since:
            self._since.clear()
            self._count.clear()
            self.log.warning("store available again")


TROUBLE = Trouble()


class _QuietDriver(logging.Filter):
    """asyncpg's pool logs a traceback each time it fails to reconnect: a store fault goes through
    TROUBLE instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or store_fault(exc) is None:
            return True
        TROUBLE.report(exc, record.getMessage())
        return False


logging.getLogger("asyncpg.pool").addFilter(_QuietDriver())


def failed(logger: logging.Logger, exc: BaseException, message: str, *args: Any) -> None:
    """Log a failure of the engine's loops: a store fault through TROUBLE (no traceback), anything
    else with its traceback."""
    if store_fault(exc) is not None:
        TROUBLE.report(exc, message % args if args else message)
    else:
        logger.error(message, *args, exc_info=exc)
