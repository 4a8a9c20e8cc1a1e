"""A step in flight when its engine is killed is sent again after the restart with its secrets and
literal credentials in place, though its stored request holds only `***`."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from aiohttp import web

from legato import Engine

ROOT = Path(__file__).resolve().parents[2]
SECRET = "resume-S3cr3t-2b7d"
LITERAL = "resume-lit-9e4c"

CHILD = """
import asyncio, sys
from legato import Engine

async def main():
    async with Engine.open(sys.argv[1]) as engine:
        await engine.apply({"name": "wf", "steps": {"call": {"http": {
            "url": sys.argv[2] + "/hold?key={{ secrets.TOK }}",
            "headers": {"Authorization": "Bearer {{ secrets.TOK }}", "X-Lit": sys.argv[3]},
            "json": {"t": "{{ secrets.TOK }}"}}}}})
        await engine.start_run("wf", {})
        print("started", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_resumed_step_sends_its_secrets_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def hold(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        if len(seen) == 1:
            await asyncio.sleep(60)  # the first call hangs until its engine is killed
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hold", hold)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    db_file = tmp_path / "resume.db"
    db_url = f"sqlite:///{db_file}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEGATO_SECRET_TOK": SECRET}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, db_url, url, LITERAL, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"started"
        while not seen:
            await asyncio.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        await child.wait()
        with sqlite3.connect(db_file) as conn:
            stored = conn.execute("SELECT status, request FROM steps").fetchall()
        assert stored[0][0] == "running" and SECRET not in stored[0][1]
        monkeypatch.setenv("LEGATO_SECRET_TOK", SECRET)
        async with Engine.open(db_url) as engine:
            while engine.active_runs():
                await asyncio.sleep(0.02)
            (summary,) = await engine.store.list_runs(limit=2)
            run = await engine.get_run(summary.id)
    finally:
        if child.returncode is None:
            child.kill()
        await runner.cleanup()
    assert run.info.status == "succeeded", run.info.error
    first, again = seen
    for sent in (first, again):
        assert sent.headers["Authorization"] == f"Bearer {SECRET}"
        assert sent.headers["X-Lit"] == LITERAL
        assert sent.query["key"] == SECRET
    assert bodies[1] == bodies[0] and SECRET.encode() in bodies[1]
    assert again.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
    request = run.steps["call"].request
    assert request is not None and request["headers"] == {"Authorization": "***", "X-Lit": "***"}
