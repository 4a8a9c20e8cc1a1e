"""`legato serve|worker --dags DIR` and `legato apply FILE.py`, run as a user runs them: real server and
worker processes started by the CLI, on a real folder of DAG files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from legato.client import AsyncClient
from legato.dags import DagFileError, load_folder
from tests.integration.serverprocess import start_server
from tests.integration.test_cli import LEGATO, _run_async
from tests.integration.testservice import LoopbackService

GREET = """
from legato.dsl import http, task, workflow
from _words import shout  # a helper module beside the DAG files (skipped as a DAG: it starts with _)


def exclaim(text: str) -> str:
    return text + "!"


@workflow(inputs={"who": "string"}, output="{{ steps.exclaim.output }}")
def dag_greet():
    @task(args={"who": "{{ input.who }}"})
    def hello(who: str) -> dict:
        return {"text": shout("hello " + who)}

    hello >> task(exclaim, args={"text": "{{ steps.hello.output.text }}"})
"""

# The shape of a CoWorks DAG file (`@biz` on a function, then `first = first()` at module level),
# written with legato.dsl alone: what the coworks compat module's decorator is built on.
COWORKS_SHAPED = """
from legato.dsl import task, workflow


def biz(**options):
    def decorate(fn):
        return lambda: workflow(fn, **options)
    return decorate


@biz(tags=["coworks"])
def first():
    @task()
    def print_result():
        print("printed")
        return "printed"


first = first()
"""

HTTP_ONLY = """
from legato import dsl

@dsl.workflow(output="{{ steps.call.output.body.echo.n }}")
def dag_http():
    dsl.http("call", service="svc", method="POST", path="/echo", json={"n": 7})

also = dag_http  # the same workflow under a second name is registered once
"""


def dag_folder(tmp: Path, greet: str = GREET) -> Path:
    folder = tmp / "dags"
    folder.mkdir(exist_ok=True)
    (folder / "greet.py").write_text(greet)
    (folder / "coworks_first.py").write_text(COWORKS_SHAPED)
    (folder / "_words.py").write_text("def shout(text):\n    return text.upper()\n")
    (folder / "notes.txt").write_text("not python")
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "ignored.py").write_text("raise RuntimeError('subfolders are not DAGs')\n")
    return folder


async def test_serve_dags_registers_the_files_workflows_and_runs_their_python_tasks(
    tmp_path: Path,
) -> None:
    folder = dag_folder(tmp_path)
    db = f"sqlite:///{tmp_path / 'dags.db'}"
    server = start_server(tmp_path, "--dags", str(folder), db=db)
    try:
        async with AsyncClient(server.url) as api:
            run = await api.start("dag_greet", {"who": "ada"}, wait=20)
            assert run["status"] == "succeeded", run
            assert run["output"] == "HELLO ADA!"
            wf = await api.workflow("dag_greet")
            steps = wf["definition"]["steps"]
            assert steps["hello"]["python"]["function"] == (
                "legato_dags.greet:dag_greet.<locals>.hello"
            )
            assert steps["exclaim"]["python"]["function"] == "legato_dags.greet:exclaim"
            run = await api.start("first", wait=20)
            assert (run["status"], run["output"]) == ("succeeded", {"print_result": "printed"})
    finally:
        server.stop()
    assert "dag_greet v1 (new version) from greet.py" in server.output()

    # Started again on the same file: the same version.
    server = start_server(tmp_path, "--dags", str(folder), db=db, name="again")
    server.stop()
    assert "dag_greet v1 (unchanged) from greet.py" in server.output()
    # A function's body is code, not definition: the same version runs the new code.
    (folder / "greet.py").write_text(GREET.replace('"!"', '"?"'))
    server = start_server(tmp_path, "--dags", str(folder), db=db, name="code")
    try:
        async with AsyncClient(server.url) as api:
            run = await api.start("dag_greet", {"who": "bob"}, wait=20)
            assert (run["output"], run["version"]) == ("HELLO BOB?", 1)
    finally:
        server.stop()
    # A changed definition: a new version.
    (folder / "greet.py").write_text(GREET.replace("{{ steps.exclaim.output }}", "{{ steps }}"))
    server = start_server(tmp_path, "--dags", str(folder), db=db, name="changed")
    server.stop()
    assert "dag_greet v2 (new version) from greet.py" in server.output()


def test_broken_dag_files_stop_the_start_each_named_with_its_line(tmp_path: Path) -> None:
    folder = dag_folder(tmp_path)
    (folder / "broken.py").write_text("import os\n\nvalue = missing_name + 1\n")
    (folder / "syntax.py").write_text("def f(:\n    pass\n")
    (folder / "exits.py").write_text("import sys\nsys.exit(3)\n")
    for command in ("serve", "worker"):
        done = subprocess.run(
            [*LEGATO, command, "--dags", str(folder), "--port", "0"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "3 DAG files cannot be used" in done.stderr
        assert f"{folder / 'broken.py'}:3: NameError: name 'missing_name' is not defined" in (
            done.stderr
        )
        assert f"{folder / 'syntax.py'}:1: SyntaxError" in done.stderr
        assert f"{folder / 'exits.py'}:2: SystemExit: 3" in done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "legato.db").exists()  # refused before opening anything
    missing = subprocess.run(
        [*LEGATO, "serve", "--dags", str(tmp_path / "nope"), "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "nope: is not a directory" in missing.stderr


def test_two_files_defining_one_workflow_differently_are_refused(tmp_path: Path) -> None:
    folder = dag_folder(tmp_path)
    (folder / "other.py").write_text(GREET.replace('"!"', '"?"'))
    done = subprocess.run(
        [*LEGATO, "serve", "--dags", str(folder), "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "defines workflow 'dag_greet', which greet.py defines differently" in done.stderr


def test_a_dag_workflow_the_engine_refuses_stops_the_start(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "calls.py").write_text(
        "from legato.dsl import http, workflow\n\n"
        "@workflow\ndef calls_nobody():\n    http('s', service='nobody', path='/')\n"
    )
    done = subprocess.run(
        [*LEGATO, "serve", "--dags", str(folder), "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "calls.py: workflow 'calls_nobody': invalid definition: steps.s.http.service: " in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


async def test_a_worker_with_the_dags_runs_the_python_tasks_of_an_api_server(
    tmp_path: Path, shared_db: str
) -> None:
    """PostgreSQL shared by an API-only server (which registers) and a worker (which runs)."""
    folder = dag_folder(tmp_path)
    api_server = start_server(
        tmp_path, "--api-only", "--migrate", "--dags", str(folder), db=shared_db, name="api"
    )
    worker = start_server(
        tmp_path, "--dags", str(folder), db=shared_db, name="worker", command="worker"
    )
    try:
        async with AsyncClient(api_server.url) as api:
            run = await api.start("dag_greet", {"who": "cy"}, wait=30)
            assert run["status"] == "succeeded", run
            assert run["output"] == "HELLO CY!"
    finally:
        worker.stop()
        api_server.stop()
    assert "dag_greet v1 (new version) from greet.py" in api_server.output()
    assert "runs the Python tasks of dag_greet, first" in worker.output()
    assert "dag_greet v" not in worker.output()  # a worker registers nothing


async def test_apply_a_python_file_registers_each_workflow(
    tmp_path: Path, service: LoopbackService
) -> None:
    folder = dag_folder(tmp_path)
    (tmp_path / "flows.py").write_text(HTTP_ONLY)
    (tmp_path / "empty.py").write_text("X = 1\n")
    (tmp_path / "bad.py").write_text("\n\nraise ValueError('no config')\n")
    plain = start_server(tmp_path, name="plain")
    with_dags = start_server(tmp_path, "--dags", str(folder), name="with-dags")
    try:
        async with AsyncClient(plain.url) as api:
            await api.add_service({"name": "svc", "base_url": service.url, "timeout": 5})
        code, out, err = await _run_async("apply", str(tmp_path / "flows.py"), "--url", plain.url)
        assert (code, out) == (0, "dag_http v1 (new version)\n"), err
        async with AsyncClient(plain.url) as api:
            run = await api.start("dag_http", wait=20)
            assert run["output"] == 7

        # Python steps: refused where the server does not load the file, with the reason.
        greet = str(folder / "greet.py")
        code, out, err = await _run_async("apply", greet, "--url", plain.url)
        assert code == 2
        assert "legato_dags.greet:exclaim" in err
        assert "load greet.py with --dags (it is imported as legato_dags.greet)" in err
        code, out, err = await _run_async("apply", greet, "--url", with_dags.url)
        assert (code, out) == (0, "dag_greet v1 (unchanged)\n"), err
        assert "note: dag_greet: its Python steps run only where" in err

        code, out, err = await _run_async("apply", str(tmp_path / "empty.py"), "--url", plain.url)
        assert code == 2 and "defines no workflow at module level" in err
        code, out, err = await _run_async("apply", str(tmp_path / "bad.py"), "--url", plain.url)
        assert code == 2 and f"{tmp_path / 'bad.py'}:3: ValueError: no config" in err
        assert "Traceback" not in err
    finally:
        plain.stop()
        with_dags.stop()


def test_a_file_that_never_finishes_importing_or_raises_anything_is_listed(
    tmp_path: Path,
) -> None:
    """A hanging import cannot be stopped: past --dags-import-timeout the file is listed as
    broken with the others (KeyboardInterrupt and any BaseException too) and nothing starts."""
    folder = dag_folder(tmp_path)
    (folder / "loop.py").write_text("while True:\n    pass\n")
    (folder / "kbi.py").write_text("raise KeyboardInterrupt\n")
    (folder / "base.py").write_text('class E(BaseException):\n    pass\n\n\nraise E("x")\n')
    (folder / "broken.py").write_text("value = missing_name + 1\n")
    done = subprocess.run(
        [*LEGATO, "serve", "--dags", str(folder), "--dags-import-timeout", "2", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "4 DAG files cannot be used" in done.stderr
    assert f"{folder / 'loop.py'}: still importing after 2s" in done.stderr
    assert f"{folder / 'kbi.py'}:1: KeyboardInterrupt" in done.stderr
    assert f"{folder / 'base.py'}:5: E: x" in done.stderr
    assert f"{folder / 'broken.py'}:1: NameError" in done.stderr
    assert "importing DAG file 6/6: loop.py" in done.stderr  # progress, in name order
    assert "Traceback" not in done.stderr and "Aborted" not in done.stderr
    assert not (tmp_path / "legato.db").exists()


def test_validate_export_and_run_say_a_dag_file_is_for_apply(tmp_path: Path) -> None:
    folder = dag_folder(tmp_path)
    for command in ("validate", "export", "run"):
        done = subprocess.run(
            [*LEGATO, command, str(folder / "greet.py")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "a DAG file (Python), not a YAML/JSON definition" in done.stderr
        assert "legato apply FILE.py" in done.stderr and "YAML at line" not in done.stderr


def test_dag_files_import_on_the_main_thread(tmp_path: Path) -> None:
    """A file that installs a signal handler or takes the event loop at import works (only the main
    thread can), and its module-level state is the importing thread's."""
    folder = tmp_path / "mainthread"
    folder.mkdir()
    (folder / "sig.py").write_text(
        "import signal\n\nseen = []\nsignal.signal(signal.SIGUSR1, lambda *a: seen.append(1))\n"
    )
    (folder / "loop.py").write_text("import asyncio\n\nloop = asyncio.get_event_loop()\n")
    # A fresh process, as `legato serve --dags` is (pytest's own loop handling is not a user's).
    check = (
        "import asyncio, signal, sys\n"
        "from pathlib import Path\n"
        "from legato.dags import load_folder\n"
        "loaded = load_folder(Path(sys.argv[1]), 5)\n"
        "import legato_dags.loop, legato_dags.sig\n"
        "signal.raise_signal(signal.SIGUSR1)\n"
        "print([f.path.name for f in loaded.files], legato_dags.sig.seen,\n"
        "      isinstance(legato_dags.loop.loop, asyncio.AbstractEventLoop))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['loop.py', 'sig.py'] [1] True"


def test_the_import_timeout_interrupts_the_file_and_restores_the_alarm(tmp_path: Path) -> None:
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "spin.py").write_text(
        "try:\n    while True:\n        pass\nexcept Exception:\n    pass\n"
    )
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    signal.setitimer(signal.ITIMER_REAL, 3.0)  # someone's own timer, running
    started = time.monotonic()
    try:
        with pytest.raises(DagFileError, match=r"spin.py: still importing after 0.3s"):
            load_folder(folder, 0.3)
        assert time.monotonic() - started < 2
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 2.8  # put back, less the time spent
        assert fired == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_relative_import_says_what_to_write_instead(tmp_path: Path) -> None:
    folder = tmp_path / "relative"
    folder.mkdir()
    (folder / "_helper.py").write_text("X = 1\n")
    (folder / "uses.py").write_text("from . import _helper\n")
    with pytest.raises(DagFileError) as failed:
        load_folder(folder, 5)
    message = failed.value.problems[0]
    assert message.startswith(f"{folder / 'uses.py'}:1: ImportError")
    assert "not a package" in message and "import helper" in message
