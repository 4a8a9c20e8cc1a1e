"""The `legato` command and the examples, run as a user runs them: in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.integration.testservice import LoopbackService

ROOT = Path(__file__).resolve().parents[2]
LEGATO = [sys.executable, "-m", "legato.cli"]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LEGATO, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_demo_serves_the_samples_and_runs_the_order_through_the_api(tmp_path: Path) -> None:
    done = run_cli("demo", "--db", f"sqlite:///{tmp_path / 'demo.db'}", "--port", "0", "--exit")
    assert done.returncode == 0, done.stderr
    assert "demo: the order run succeeded" in done.stderr
    assert "workflow take-order v1" in done.stderr
    assert "/docs" in done.stderr  # the address to look at
    run = orjson.loads(done.stdout)
    assert run["status"] == "succeeded"
    assert run["output"]["labels"] == ["NOTEBOOK", "PENCIL"]
    assert run["steps"]["refuse"] == "skipped"
    assert (tmp_path / "demo.db").exists()


def test_demo_without_a_terminal_stops_after_its_run(tmp_path: Path) -> None:
    done = run_cli("demo", "--db", f"sqlite:///{tmp_path / 'demo.db'}", "--port", "0")
    assert done.returncode == 0, done.stderr  # run_cli gives it pipes, not a terminal: it ends
    assert "demo: the order run succeeded" in done.stderr
    assert "Ctrl-C stops the server" not in done.stderr


def test_validate_names_the_path_of_each_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nsteps:\n  a: {http: {url: 'http://h/'}, retry: {delay: soon}}\n"
        "  b: {http: {url: 'http://h/'}, depends_on: [zzz]}\n"
    )
    done = run_cli("validate", str(bad))
    assert done.returncode == 2
    assert "steps.a.retry.delay: must be a duration" in done.stderr
    assert "Traceback" not in done.stderr
    good = run_cli("validate", str(ROOT / "src/legato/samples/order.yaml"))
    assert good.returncode == 0, good.stderr
    assert "take-order: valid, 7 steps" in good.stdout


def test_malformed_yaml_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsteps: [\n")
    done = run_cli("validate", str(bad))
    assert done.returncode == 2
    assert "malformed YAML at line" in done.stderr


async def test_run_registers_services_and_runs_a_file(
    tmp_path: Path, service: LoopbackService
) -> None:
    (tmp_path / "services.yaml").write_text(f"- {{name: svc, base_url: '{service.url}'}}\n")
    (tmp_path / "wf.yaml").write_text(
        "name: hello\ninputs: {who: string}\nsteps:\n"
        "  greet: {http: {service: svc, path: /echo, json: {who: '{{ input.who }}'}}}\n"
        "output: '{{ steps.greet.output.body.echo.who }}'\n"
    )
    proc = await _run_async(
        "run",
        str(tmp_path / "wf.yaml"),
        "--services",
        str(tmp_path / "services.yaml"),
        "--input",
        '{"who": "ada"}',
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
    )
    code, out, err = proc
    assert code == 0, err
    assert orjson.loads(out)["output"] == "ada"
    code, out, err = await _run_async(
        "run",
        str(tmp_path / "wf.yaml"),
        "--input",
        '{"who": 1}',
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
    )
    assert code == 2
    assert "input.who: must be a string, got integer" in err


def test_python_dsl_example_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples/order_dsl.py"), f"sqlite:///{tmp_path / 'ex.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["output"]["receipt"]["total"] == 120.0


async def _run_async(*args: str) -> tuple[int, str, str]:
    """The service under test lives in this event loop, so the CLI must not block it."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *LEGATO, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


def test_a_bad_time_bound_in_the_environment_stops_the_server_with_its_name(
    tmp_path: Path,
) -> None:
    """`nan`, `0` or words once started a server whose every bulk action failed (or a traceback)."""
    for value in ("nan", "0", "-5", "abc"):
        env = {**os.environ, "LEGATO_BULK_TIMEOUT": value, "LEGATO_STORE_TIMEOUT": "3"}
        done = subprocess.run(
            [*LEGATO, "serve", "--db", f"sqlite:///{tmp_path / 'b.db'}", "--port", "0"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert done.returncode == 2, (value, done.stderr)
        assert f"LEGATO_BULK_TIMEOUT must be a number of seconds above 0, not {value!r}" in (
            done.stderr
        ), done.stderr
        assert "Traceback" not in done.stderr
