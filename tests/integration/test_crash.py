"""Crash safety: SIGKILL the engine mid-run, start it again on the same file, and every run finishes
with no succeeded step called again and no step lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

from legato import Engine
from tests.integration.testservice import LoopbackService

RUNS = 40
ROOT = Path(__file__).resolve().parents[2]


async def test_sigkill_mid_run_then_resume(tmp_path: Path, service: LoopbackService) -> None:
    db_file = tmp_path / "crash.db"
    db_url = f"sqlite:///{db_file}"
    root = ROOT
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.crash_child",
        db_url,
        service.url,
        str(RUNS),
        cwd=root,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 30)
    assert line.strip() == b"started"
    # Kill while step "two" (the slow one) is in flight for most runs and done for none or few.
    while len([r for r in service.seen("/slow") if r.json["step"] == "two"]) < RUNS // 2:
        await asyncio.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert child.returncode == -signal.SIGKILL

    with sqlite3.connect(db_file) as conn:
        committed = dict(
            ((r, s), st) for r, s, st in conn.execute("SELECT run_id, name, status FROM steps")
        )
        active = conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
    assert active == RUNS, "the kill left every run unfinished"
    succeeded_before = {k for k, st in committed.items() if st == "succeeded"}
    in_flight = {k for k, st in committed.items() if st == "running"}
    assert in_flight, "some steps were running at the kill"
    calls_before = len(service.requests)

    async with Engine.open(db_url) as engine:
        assert engine.active_runs() == RUNS
        while engine.active_runs():
            await asyncio.sleep(0.02)
        runs = await engine.store.list_runs(limit=RUNS + 1)

    assert len(runs) == RUNS
    assert all(r.status == "succeeded" for r in runs), [r.error for r in runs if r.error]
    assert sorted(r.output for r in runs) == [n * 10 for n in range(RUNS)]
    after = service.requests[calls_before:]
    again = {(r.headers["Idempotency-Key"].split(":")[0], r.json["step"]) for r in after}
    assert not again & succeeded_before, "a step that had succeeded was called again"
    # Every step that was in flight is re-sent with the same Idempotency-Key; nothing else repeats.
    keys = [r.headers["Idempotency-Key"] for r in service.requests]
    repeated = {k for k in keys if keys.count(k) > 1}
    assert {tuple(k.split(":")) for k in repeated} <= in_flight
    # No step is lost: every run called each of its three steps.
    per_run = {(r.headers["Idempotency-Key"]) for r in service.requests}
    assert len(per_run) == RUNS * 3
