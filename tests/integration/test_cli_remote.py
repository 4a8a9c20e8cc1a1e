"""The `legato` commands that talk to a server, run as a user runs them: subprocesses against a real
server process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
from pathlib import Path

import orjson

from legato.client import AsyncClient
from tests.integration.serverprocess import ServerProcess
from tests.integration.test_cli import LEGATO, ROOT, _run_async
from tests.integration.testservice import LoopbackService


async def legato(server: ServerProcess, *args: str) -> tuple[int, str, str]:
    return await _run_async(*args, "--url", server.url)


async def test_service_add_list_apply_start_show_and_runs(
    server: ServerProcess, service: LoopbackService, tmp_path: Path
) -> None:
    code, out, err = await legato(
        server, "service", "add", "svc", service.url, "--timeout", "5s", "--replace"
    )
    assert code == 0, err
    assert out.strip() == f"svc  {service.url}"
    code, out, err = await legato(server, "service", "list")
    assert code == 0 and "svc" in out and "timeout 5s" in out
    code, out, err = await legato(
        server, "service", "add", "once", service.url, "--retries", "0", "--replace"
    )
    assert code == 0, err
    code, out, err = await legato(server, "service", "list")
    assert "retries 0" in next(line for line in out.splitlines() if line.startswith("once "))
    wf = tmp_path / "hello.yaml"
    wf.write_text(
        "name: cli-hello\ninputs: {who: string}\nsteps:\n"
        "  greet: {http: {service: svc, path: /echo, json: {who: '{{ input.who }}'}}}\n"
        "output: '{{ steps.greet.output.body.echo.who }}'\n"
    )
    code, out, err = await legato(server, "apply", str(wf))
    assert (code, out.strip()) == (0, "cli-hello v1 (new version)"), err
    code, out, err = await legato(server, "apply", str(wf))
    assert out.strip() == "cli-hello v1 (unchanged)"

    code, out, err = await legato(
        server, "start", "cli-hello", "--input", '{"who": "ada"}', "--wait"
    )
    assert code == 0, err
    assert "succeeded" in out and 'output: "ada"' in out
    run_id = out.split()[1]
    code, out, err = await legato(server, "show", run_id, "--json")
    assert code == 0 and orjson.loads(out)["output"] == "ada"
    code, out, err = await legato(server, "show", run_id)
    assert "greet" in out and "succeeded" in out

    code, out, err = await legato(server, "start", "cli-hello", "--input", '{"who": "bob"}')
    assert code == 0 and len(out.strip()) == 32  # just the id
    async with AsyncClient(server.url) as api:
        await api.wait(out.strip(), timeout=10)
    code, out, err = await legato(server, "runs", "--workflow", "cli-hello", "--limit", "1")
    assert code == 0 and len(out.strip().splitlines()) == 1
    assert "more: legato runs --cursor" in err
    code, out, err = await legato(server, "runs", "--workflow", "cli-hello", "--json")
    assert [r["status"] for r in orjson.loads(out)["runs"]] == ["succeeded", "succeeded"]


async def test_refusals_are_printed_with_their_fields_and_exit_2(
    server: ServerProcess, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: cli-bad\nsteps:\n  a: {http: {url: 'http://h/'}, retry: {delay: soon}}\n")
    code, _, err = await legato(server, "apply", str(bad))
    assert code == 2
    assert "steps.a.retry.delay: must be a duration" in err
    assert "Traceback" not in err
    code, _out, err = await legato(server, "start", "no-such-workflow")
    assert code == 2 and "no workflow named 'no-such-workflow'" in err
    code, _, err = await legato(server, "show", "f" * 32)
    assert code == 2 and "no run with id" in err


async def test_cancel_and_retry_from_the_command_line(
    server: ServerProcess, service: LoopbackService
) -> None:
    async with AsyncClient(server.url) as api:
        await api.add_service({"name": "svc", "base_url": service.url}, replace=True)
        await api.apply(
            {
                "name": "cli-slow",
                "steps": {
                    "nap": {"http": {"service": "svc", "path": "/slow", "query": {"delay": "3"}}}
                },
            }
        )
        run_id = (await api.start("cli-slow", {}))["id"]
    code, out, err = await legato(server, "cancel", run_id)
    assert (code, out.strip()) == (0, f"{run_id} cancelled"), err
    code, out, err = await legato(server, "retry", run_id)
    assert code == 0 and out.startswith(run_id), err
    code, out, err = await legato(server, "start", "cli-slow", "--wait", "--timeout", "0.1")
    assert code == 3  # still running when the timeout passed


async def test_the_server_url_comes_from_the_environment(server: ServerProcess) -> None:
    os.environ["LEGATO_URL"] = server.url
    try:
        code, out, err = await _run_async("service", "list", "--json")
    finally:
        del os.environ["LEGATO_URL"]
    assert code == 0, err
    assert isinstance(orjson.loads(out), list)


async def test_a_long_wait_shows_progress_on_a_terminal(
    server: ServerProcess, service: LoopbackService
) -> None:
    async with AsyncClient(server.url) as api:
        await api.add_service({"name": "svc", "base_url": service.url}, replace=True)
        await api.apply(
            {
                "name": "cli-progress",
                "steps": {
                    "nap": {"http": {"service": "svc", "path": "/slow", "query": {"delay": "1.5"}}}
                },
            }
        )
    leader, follower = pty.openpty()  # stderr is a terminal; stdout stays a pipe
    proc = await asyncio.create_subprocess_exec(
        *LEGATO,
        "start",
        "cli-progress",
        "--wait",
        "--url",
        server.url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    shown = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(leader, 4096):
            shown += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"running: 0/1 steps done" in shown and b"running nap" in shown
    assert b"succeeded: 1/1 steps done" in shown
    assert b"\r" in shown  # one line, rewritten in place
    assert b"steps done" not in out  # progress never pollutes the output


async def test_an_input_file_that_cannot_be_read_is_a_usage_error(server: ServerProcess) -> None:
    code, _, err = await legato(server, "start", "cli-hello", "--input", "@/no/such/file.json")
    assert code == 2
    assert "cannot read /no/such/file.json" in err
    assert "Traceback" not in err
