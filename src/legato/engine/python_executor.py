"""Runs Python function steps: coroutines on the loop, plain functions on worker threads so a blocking
function cannot stall every other run.

A definition that arrives over the network must not be able to name `os:system`: an executor given
`modules` resolves a name only to a function defined in one of those modules (or their submodules),
and never walks through another module to get there (`json:codecs.builtins.open` is refused).
Functions registered in this process (the DSL's) are always allowed; they are the process's own code.

Worker threads are daemons of a small pool of our own: a function that never returns cannot hold the
process past its drain (the standard pool's threads are joined at exit).
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import queue
import sys
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from types import ModuleType
from typing import Any

import orjson

from legato.engine import step_logs
from legato.engine.outcome import Outcome

MAX_THREADS = 32


class _DaemonPool:
    """Runs blocking calls on up to MAX_THREADS daemon threads, started as the load needs them.

    A call whose step was cancelled before a thread took it never runs; a call that ends after its
    event loop closed is dropped (asyncio.wrap_future sees to both).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0

    async def run(self, call: Callable[[], Any]) -> Any:
        job: Future[Any] = Future()
        with self._lock:
            self._queued += 1
            if self._queued > self._idle and self._threads < MAX_THREADS:
                self._threads += 1
                threading.Thread(target=self._work, name="legato-python", daemon=True).start()
        self._jobs.put((call, job))
        return await asyncio.wrap_future(job)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._jobs.get()
            with self._lock:
                self._idle -= 1
                if item is None:
                    self._threads -= 1
                    return
                self._queued -= 1
            call, job = item
            if not job.set_running_or_notify_cancel():
                continue
            try:
                job.set_result(call())
            except BaseException as exc:  # SystemExit included: it fails the step, not the thread
                job.set_exception(exc)

    def close(self) -> None:
        """Let idle threads end; a busy one ends after its call (it is a daemon: exit won't wait)."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)


class PythonExecutor:
    def __init__(
        self, functions: Mapping[str, Callable[..., Any]], modules: Collection[str] | None = None
    ) -> None:
        self._functions = functions
        self._imported: dict[str, Callable[..., Any]] = {}
        self.modules = None if modules is None else tuple(modules)
        self._pool = _DaemonPool()

    def _allowed_module(self, name: str) -> bool:
        return self.modules is None or any(
            name == m or name.startswith(m + ".") for m in self.modules
        )

    def resolve(self, path: str) -> Callable[..., Any] | None:
        fn = self._functions.get(path) or self._imported.get(path)
        if fn is not None:
            return fn
        module_name, _, qualname = path.partition(":")
        if "<locals>" in qualname or not self._allowed_module(module_name):
            return None
        parts = qualname.split(".")
        if self.modules is not None and any(
            p.startswith("_") for p in (*module_name.split("."), *parts)
        ):
            return None  # __globals__, __builtins__, __main__...: not a function of the module
        try:
            obj: Any = importlib.import_module(module_name)
            for part in parts:
                obj = getattr(obj, part)
                if isinstance(obj, ModuleType):  # through another module: not what was allowed
                    return None
        except Exception:  # an import that fails, whatever the reason, finds nothing
            return None
        if not callable(obj):
            return None
        owner = getattr(obj, "__module__", None)
        if self.modules is not None and not (
            isinstance(owner, str) and self._allowed_module(owner)
        ):
            return None  # a name the module imported from elsewhere
        self._imported[path] = obj
        return obj  # type: ignore[no-any-return]

    def close(self) -> None:
        self._pool.close()

    async def execute(self, request: dict[str, Any], timeout: float | None = None) -> Outcome:
        """Run the step's function within `timeout`; the outcome carries what it printed and
        logged (see step_logs), and a failure its traceback."""
        path = request["function"]
        fn = self.resolve(path)
        if fn is None:
            return Outcome.failure(
                "config",
                f"function {path!r} cannot be found or is not allowed: import it, or register "
                "the workflow that defines it in this process",
            )
        args = request.get("args") or {}
        step_logs.install()
        streams = (sys.stdout, sys.stderr)
        buffer = step_logs.StepBuffer()
        token = step_logs.current.set(buffer)
        try:
            outcome, error = await self._run(fn, args, timeout)
        finally:
            step_logs.current.reset(token)
            step_logs.reinstate(streams)
        logs = buffer.finish(error)
        return Outcome(outcome.ok, outcome.output, outcome.error, logs) if logs else outcome

    async def _call(self, fn: Callable[..., Any], args: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(**args)
        context = contextvars.copy_context()  # the thread writes to this step's buffer
        return await self._pool.run(lambda: context.run(fn, **args))

    async def _run(
        self, fn: Callable[..., Any], args: dict[str, Any], timeout: float | None
    ) -> tuple[Outcome, BaseException | None]:
        limit = None if timeout is None else asyncio.timeout(timeout)
        try:
            if limit is None:  # most steps: no timeout to arm
                result = await self._call(fn, args)
            else:
                async with limit:
                    result = await self._call(fn, args)
        except TimeoutError as exc:
            if timeout is not None and limit is not None and limit.expired():
                return Outcome.failure("timeout", f"did not return within {timeout:g}s"), None
            return _raised(exc)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the step itself was cancelled
            return Outcome.failure(
                "exception", f"CancelledError raised by the function: {exc}"
            ), exc
        except BaseException as exc:  # SystemExit or KeyboardInterrupt from a step fails the step
            return _raised(exc)
        try:
            orjson.dumps(result)
        except TypeError as exc:
            message = f"the function returned a value that is not JSON: {exc}"
            return Outcome.failure("output", message), None
        return Outcome(True, result), None


def _raised(exc: BaseException) -> tuple[Outcome, BaseException]:
    """The failure of a function that raised, and the exception whose traceback its logs keep
    (without the executor's own frames)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES:
        tb = tb.tb_next
    exc = exc.with_traceback(tb)
    return Outcome.failure(
        "exception", f"{type(exc).__name__}: {exc}", type=type(exc).__name__
    ), exc


_OWN_FILES = frozenset({__file__, asyncio.futures.__file__, asyncio.tasks.__file__})
