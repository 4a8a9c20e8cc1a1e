"""DAG files: Python files whose module-level `Workflow` objects are workflows to register.

`legato serve --dags DIR`, `legato worker --dags DIR` and `legato apply FILE.py` import files the same
way, so that a Python step's function path recorded by one process (`module:qualname`) names the same
function in every other: a file `DIR/orders.py` is imported as the module `legato_dags.orders`, whatever
the folder is called or where it is mounted. A task declared inside a workflow function
(`legato_dags.orders:take_order.<locals>.receipt`) cannot be imported by path at all; it is found
because each process that imports the file registers the functions the file's workflows declare.

Only the folder's own `*.py` files are imported (not its subfolders: those are for helper modules the
files import, the folder being put on `sys.path`); files whose name starts with `_` or `.` are skipped.
A file that fails to import is reported with its name, the line that failed and the exception, and
every broken file is listed at once (the process then refuses to start). Whatever a file raises
counts, KeyboardInterrupt and other BaseExceptions included. A file still importing after
`import_timeout` seconds (`--dags-import-timeout`, 30 by default) is listed as broken too.

Files are imported on the calling thread, which should be the main one: DAG files (and the libraries
they use) install signal handlers or call `asyncio.get_event_loop()` at import, which only work
there. The timeout is a SIGALRM timer (`signal.setitimer`) whose handler raises in the importing
code; the previous handler and timer are restored afterwards. So it applies only on the main thread
of a platform with SIGALRM (off it, or on Windows, files import without a timeout), and it cannot
interrupt a C call that blocks without returning to Python (a read with no timeout in an extension),
nor a file that installs its own SIGALRM handler or catches BaseException.

Files are not a package: a relative import (`from . import helper`) fails with a message saying to
import the helper by its plain name (`import helper`), the folder being on `sys.path`.

A module a DAG file imports may need the running engine to do its part (legato.compat.dagger reads
its listener topics with the classes' key methods): it registers an `on_engine_started` hook, which
a worker serving the folder calls once its engine has started. The core imports no compat module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legato.errors import LegatoError
from legato.model.workflow import MapOver, PythonCall, Workflow

if TYPE_CHECKING:
    from legato.engine.runtime import Engine

PACKAGE = "legato_dags"
DEFAULT_IMPORT_TIMEOUT = 30.0
_NOT_NAME = re.compile(r"\W")


class DagFileError(LegatoError):
    """One or more DAG files could not be imported (or disagree); `problems` name each."""

    def __init__(self, problems: list[str]) -> None:
        noun = "DAG file" if len(problems) == 1 else "DAG files"
        super().__init__(f"{len(problems)} {noun} cannot be used:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass
class DagFile:
    path: Path
    module: str
    workflows: list[Workflow] = field(default_factory=list)


@dataclass
class DagFolder:
    files: list[DagFile]

    @property
    def workflows(self) -> list[Workflow]:
        return [wf for f in self.files for wf in f.workflows]

    def functions(self) -> dict[str, Callable[..., Any]]:
        """Every function a workflow of the folder declares, by its path."""
        found: dict[str, Callable[..., Any]] = {}
        for wf in self.workflows:
            found.update(wf.functions)
        return found

    @property
    def modules(self) -> tuple[str, ...]:
        """The files' module names: Python steps may import functions from them by path."""
        return tuple(f.module for f in self.files)


StartedHook = Callable[["Engine", DagFolder], Awaitable[None]]
_started_hooks: list[StartedHook] = []


def on_engine_started(hook: StartedHook) -> StartedHook:
    """Call `hook(engine, folder)` once a worker (`legato serve`, `legato worker`) serving a DAG
    folder has started its engine; the hook decides whether the folder concerns it (an API-only
    server calls no hook: it runs no engine work). Registering a hook twice keeps one."""
    if hook not in _started_hooks:
        _started_hooks.append(hook)
    return hook


async def engine_started(engine: Engine, folder: DagFolder) -> None:
    """Run the hooks in the order they were registered; their LegatoError stops the start."""
    for hook in list(_started_hooks):
        await hook(engine, folder)


def module_name(path: Path) -> str:
    """The module a DAG file is imported as: `legato_dags.` and its name, each character that
    cannot be in a Python name made `_` (`my-dag.py` -> `legato_dags.my_dag`)."""
    stem = _NOT_NAME.sub("_", path.stem)
    if stem[:1].isdigit() or stem.startswith("_"):
        stem = "dag_" + stem  # a name, and not one the Python executor takes for private
    return f"{PACKAGE}.{stem}"


def dag_paths(folder: Path) -> list[Path]:
    """The folder's DAG files, by name."""
    if not folder.is_dir():
        raise DagFileError([f"{folder}: is not a directory"])
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix == ".py" and not p.name.startswith(("_", ".")) and p.is_file()
    )


def load_folder(
    folder: Path,
    import_timeout: float = DEFAULT_IMPORT_TIMEOUT,
    progress: Callable[[str], None] | None = None,
) -> DagFolder:
    """Import every DAG file of `folder`; DagFileError listing every file that fails.
    `progress` is told of each file before it is imported (a slow one is then visible)."""
    folder = folder.resolve() if folder.exists() else folder
    paths = dag_paths(folder)
    problems: list[str] = []
    by_module: dict[str, Path] = {}
    for p in paths:
        name = module_name(p)
        if name in by_module:
            problems.append(f"{p}: is imported as {name}, like {by_module[name].name}: rename one")
        by_module[name] = p
    if problems:
        raise DagFileError(problems)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))  # the files' own helper modules
    files: list[DagFile] = []
    for i, p in enumerate(paths, 1):
        if progress is not None:
            progress(f"importing DAG file {i}/{len(paths)}: {p.name}")
        try:
            files.append(load_file(p, import_timeout))
        except DagFileError as exc:
            problems.extend(exc.problems)
    problems.extend(_clashes(files))
    if problems:
        raise DagFileError(problems)
    return DagFolder(files)


def load_file(path: Path, import_timeout: float = DEFAULT_IMPORT_TIMEOUT) -> DagFile:
    """Import one DAG file under its module name and collect its module-level workflows."""
    name = module_name(path)
    _package()
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DagFileError([f"{path}: cannot be imported as a Python file"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: its own functions resolve by path meanwhile
    try:
        with _deadline(import_timeout):
            spec.loader.exec_module(module)
    except _ImportTimedOut:
        sys.modules.pop(name, None)
        raise DagFileError(
            [
                f"{path}: still importing after {import_timeout:g}s "
                "(legato serve|worker --dags-import-timeout)"
            ]
        ) from None
    except BaseException as exc:  # whatever the file raises is its failure
        sys.modules.pop(name, None)
        raise DagFileError([_describe(path, exc)]) from None
    setattr(sys.modules[PACKAGE], name.rpartition(".")[2], module)
    return DagFile(path, name, _workflows(vars(module).values()))


class _ImportTimedOut(BaseException):
    """Raised by SIGALRM in a DAG file's import past its time (a BaseException: a file's
    `except Exception` does not swallow it)."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` with _ImportTimedOut, by SIGALRM on the main thread
    (the import itself stays on the main thread, where `signal.signal` and
    `asyncio.get_event_loop()` work). The previous SIGALRM handler and timer are put back
    afterwards, the timer less the time spent. Off the main thread, without SIGALRM (Windows), or
    with no positive limit, no deadline applies."""
    usable = (
        seconds > 0
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def expire(signum: int, frame: types.FrameType | None) -> None:
        raise _ImportTimedOut

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    before = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if before[0] > 0:  # someone's timer was running: let it go off when it would have
            left = max(before[0] - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, before[1])


def _package() -> None:
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE, "DAG files imported by legato (see legato.dags).")
        package.__path__ = []
        sys.modules[PACKAGE] = package


def _workflows(values: Iterable[Any]) -> list[Workflow]:
    found: dict[int, Workflow] = {}
    for value in values:
        if isinstance(value, Workflow):
            found.setdefault(id(value), value)
    return sorted(found.values(), key=lambda wf: wf.name)


def _clashes(files: list[DagFile]) -> list[str]:
    """Two different workflows of one name (each start would make a new version, in turn)."""
    seen: dict[str, tuple[DagFile, Workflow]] = {}
    problems = []
    for f in files:
        for wf in f.workflows:
            held = seen.get(wf.name)
            if held is None:
                seen[wf.name] = (f, wf)
            elif held[1].spec != wf.spec:
                problems.append(
                    f"{f.path}: defines workflow {wf.name!r}, which {held[0].path.name} defines "
                    "differently"
                )
    return problems


def _describe(path: Path, exc: BaseException) -> str:
    """`path:line: Type: message`, the line being the file's own that failed (its last frame in the
    traceback; for a syntax error, the line Python could not read)."""
    line = None
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        line = exc.lineno
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if frame.filename == str(path):
                line = frame.lineno
    if isinstance(exc, ImportError) and (exc.name or "").startswith(PACKAGE):
        what = (
            f"{type(exc).__name__}: {exc}; DAG files are not a package: instead of a relative "
            "import, import a helper module by its plain name (`import helper`, "
            "`from helper import x`), the folder being on sys.path"
        )
    elif isinstance(exc, SyntaxError):
        what = f"{type(exc).__name__}: {exc.msg}"
    else:  # the exception's own line, without 3.11's notes
        text = str(exc)
        what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"{path}:{line}: {what}" if line else f"{path}: {what}"


def python_steps(wf: Workflow) -> list[str]:
    """The function paths a workflow's Python steps call (those of map steps included)."""
    found = []
    for step in wf.steps.values():
        action = step.action.action if isinstance(step.action, MapOver) else step.action
        if isinstance(action, PythonCall):
            found.append(action.function)
    return found
