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
import importlib
import inspect
import queue
import threading
from collections.abc import Callable, Collection, Mapping
from types import ModuleType
from typing import Any

import orjson

from legato.engine.outcome import Outcome

MAX_THREADS = 32


class _DaemonPool:
    """Runs blocking calls on up to MAX_THREADS daemon threads, started as the load needs them."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()

    async def run(self, call: Callable[[], Any]) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._idle == 0 and self._threads < MAX_THREADS:
                self._threads += 1
                threading.Thread(target=self._work, name="legato-python", daemon=True).start()
        self._jobs.put((call, fut))
        return await fut

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            call, fut = job
            try:
                result, error = call(), None
            except (
                BaseException
            ) as exc:  # SystemExit included: it must fail the step, not the thread
                result, error = None, exc
            fut.get_loop().call_soon_threadsafe(_settle, fut, result, error)


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the step was cancelled meanwhile
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


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
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
                if isinstance(obj, ModuleType):  # through another module: not what was allowed
                    return None
        except (ImportError, AttributeError):
            return None
        if not callable(obj):
            return None
        if self.modules is not None and not self._allowed_module(getattr(obj, "__module__", "")):
            return None  # a name the module imported from elsewhere
        self._imported[path] = obj
        return obj  # type: ignore[no-any-return]

    async def execute(self, request: dict[str, Any]) -> Outcome:
        path = request["function"]
        fn = self.resolve(path)
        if fn is None:
            return Outcome.failure(
                "config",
                f"function {path!r} cannot be found or is not allowed: import it, or register "
                "the workflow that defines it in this process",
            )
        args = request.get("args") or {}
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(**args)
            else:
                result = await self._pool.run(lambda: fn(**args))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # SystemExit or KeyboardInterrupt from a step fails the step
            return Outcome.failure(
                "exception", f"{type(exc).__name__}: {exc}", type=type(exc).__name__
            )
        try:
            orjson.dumps(result)
        except TypeError as exc:
            return Outcome.failure(
                "output", f"the function returned a value that is not JSON: {exc}"
            )
        return Outcome(True, result)
