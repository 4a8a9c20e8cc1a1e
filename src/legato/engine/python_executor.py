"""Runs Python function steps: coroutines on the loop, plain functions in a worker thread so a blocking
function cannot stall every other run.

A definition that arrives over the network must not be able to name `os:system`: an executor given
`modules` imports functions only from those modules (and their submodules). Functions registered in
this process (the DSL's) are always allowed; they are the process's own code.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

import orjson

from legato.engine.outcome import Outcome


class PythonExecutor:
    def __init__(
        self, functions: Mapping[str, Callable[..., Any]], modules: Collection[str] | None = None
    ) -> None:
        self._functions = functions
        self._imported: dict[str, Callable[..., Any]] = {}
        self.modules = None if modules is None else tuple(modules)

    def importable(self, path: str) -> bool:
        """May `path` ("module:qualname") be imported? Registered functions are checked apart."""
        if self.modules is None:
            return True
        module = path.partition(":")[0]
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def resolve(self, path: str) -> Callable[..., Any] | None:
        fn = self._functions.get(path) or self._imported.get(path)
        if fn is not None:
            return fn
        module_name, _, qualname = path.partition(":")
        if "<locals>" in qualname or not self.importable(path):
            return None
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            return None
        if not callable(obj):
            return None
        self._imported[path] = obj
        return obj  # type: ignore[no-any-return]

    async def execute(self, request: dict[str, Any]) -> Outcome:
        path = request["function"]
        fn = self.resolve(path)
        if fn is None:
            return Outcome.failure(
                "config",
                f"function {path!r} cannot be found: import it or register "
                "the workflow that defines it in this process",
            )
        args = request.get("args") or {}
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(**args)
            else:
                result = await asyncio.to_thread(fn, **args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
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
