"""Kser operations run as Legato workflows on a real engine: the seed's dice, a failing task that
stops the chain, merged results, and one operation whose tasks run in two worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from pathlib import Path

import orjson
import pytest

from legato import Engine
from legato.compat.kser import kser_status
from legato.transports import open_transport
from tests.integration import kser_ops
from tests.integration.brokers import broker_url, remove
from tests.integration.kser_ops import oregistry

ROOT = Path(__file__).resolve().parents[2]


async def registered(url: str, *, worker: bool = True) -> Engine:
    engine = Engine.open(url, worker=worker)
    await engine.start()
    for wf in oregistry.workflows():
        await engine.register(wf)
    return engine


async def test_the_seeds_dice_launch_rolls_three_dice(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "legato.kser")
    engine = await registered(db_url)
    try:
        run = await engine.run(
            "tests.integration.kser_ops.DiceLaunch", {"uuid": "op-1", "params": {}}, timeout=20
        )
    finally:
        await engine.close()
    assert run.info.status == "succeeded", run.info.error
    assert kser_status(run.info.status) == "SUCCESS"
    out = run.info.output
    assert out["uuid"] == "op-1" and out["retcode"] == 0 and out["stderr"] == ""
    assert re.fullmatch(r"You made a [1-6]\nYou made a [1-6]\nYou made a [1-6]", out["stdout"])
    steps = ["build", "task1_DiceRoll", "task2_DiceRoll", "task3_DiceRoll"]
    assert [s for s in steps if run.steps[s].status == "succeeded"] == steps
    lines = [r.getMessage() for r in caplog.records]
    rolls = [ln for ln in lines if ln.startswith("DiceRoll.Success: ")]
    assert len(rolls) == 3
    assert re.fullmatch(
        r"DiceRoll\.Success: tests\.integration\.kser_ops\.DiceRoll\[[0-9a-f-]{36}\]: You made a [1-6]",
        rolls[0],
    )
    assert lines[-2].startswith(
        "DiceLaunch.Success: tests.integration.kser_ops.DiceLaunch[op-1]: You made a"
    )
    assert lines[-1] == lines[-2].replace("DiceLaunch.Success", "Controller.Success", 1)


async def test_a_single_task_runs_from_a_message_with_its_uuid(db_url: str) -> None:
    engine = await registered(db_url)
    try:
        message = {"uuid": "872c3be0", "entrypoint": "tests.integration.kser_ops.DiceRoll"}
        run = await engine.run("tests.integration.kser_ops.DiceRoll", message, timeout=20)
    finally:
        await engine.close()
    assert run.info.status == "succeeded", run.info.error
    assert run.info.output["uuid"] == "872c3be0"
    assert re.fullmatch(r"You made a [1-6]", run.info.output["stdout"])


async def test_a_non_zero_retcode_fails_the_operation_and_stops_the_chain(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "legato.kser")
    kser_ops.RAN.clear()
    engine = await registered(db_url)
    try:
        run = await engine.run("tests.integration.kser_ops.Refused", {"uuid": "op-2"}, timeout=20)
    finally:
        await engine.close()
    assert run.info.status == "failed"
    assert kser_status(run.info.status) == "FAILED"
    assert kser_ops.RAN == ["before", "refuse"]  # `after` never ran
    assert run.steps["task2_Refuse"].status == "failed"
    assert run.steps["task2_Refuse"].attempt == 1  # a refusal is an answer: not retried
    assert "task3_Step" not in run.steps or run.steps["task3_Step"].status != "succeeded"
    error = run.steps["task2_Refuse"].error or {}
    assert "Refuse.Failed: tests.integration.kser_ops.Refuse[" in error["message"]
    assert "no such dice (retcode 1)" in error["message"]
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert failed[-2].startswith("Refused.Failed: tests.integration.kser_ops.Refused[op-2]: ")
    assert failed[-1].startswith("Controller.Failed: tests.integration.kser_ops.Refused[op-2]: ")
    assert "no such dice" in failed[-1]


async def test_params_reach_the_tasks_and_results_merge_along_the_chain(db_url: str) -> None:
    engine = await registered(db_url)
    try:
        name = "tests.integration.kser_ops.Chain"
        run = await engine.run(name, {"params": {"who": "ada"}}, timeout=20)
        missing = await engine.run(name, {"params": {}}, timeout=20)
        loose = await engine.run(name, {"who": "ada"}, timeout=20)
    finally:
        await engine.close()
    assert run.info.status == "succeeded", run.info.error
    out = run.info.output
    assert out["stdout"] == "ada-1 done\nada-2 done"
    assert out["retval"] == {"ada-1": 0, "ada-2": 0, "last": "ada-2"}
    assert out["uuid"] == run.info.id  # no message uuid: the run's id names the operation
    assert missing.info.status == "failed"
    assert "params.who: is required" in (missing.steps["build"].error or {})["message"]
    assert loose.info.status == "failed"
    assert "under `params`" in (loose.steps["build"].error or {})["message"]


async def test_a_forwarded_failed_result_fails_the_run_before_any_task(db_url: str) -> None:
    """Task or operation alike: a message whose `result.retcode` is not 0 gives FAILED, no task run."""
    engine = await registered(db_url)
    forwarded = {"params": {}, "result": {"retcode": 3, "stderr": "prev failed"}}
    try:
        roll = await engine.run("tests.integration.kser_ops.DiceRoll", forwarded, timeout=20)
        launch = await engine.run("tests.integration.kser_ops.DiceLaunch", forwarded, timeout=20)
    finally:
        await engine.close()
    for run, first in ((roll, "DiceRoll"), (launch, "build")):
        assert kser_status(run.info.status) == "FAILED"
        error = run.steps[first].error or {}
        assert "result.retcode: is 3: the message forwards a failed result" in error["message"]
        assert run.steps[first].attempt == 1
    assert launch.steps["task1_DiceRoll"].status != "succeeded"


async def _worker(db: str, log: Path, **env: str) -> asyncio.subprocess.Process:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.kser_worker",
            db,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", **env},
        )
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
    return proc


async def test_an_operations_tasks_run_on_two_workers_sharing_postgresql(
    shared_db: str, tmp_path: Path
) -> None:
    """Worker A runs the first task and dies (SIGKILL) inside the second; worker B takes the run
    over: the first task is not run again, the second is (at least once), the third runs on B."""
    marks = tmp_path / "marks.txt"
    api = await registered(shared_db, worker=False)
    procs: list[asyncio.subprocess.Process] = []
    try:
        run_id = await api.start_run(
            "tests.integration.kser_ops.Relay", {"params": {"log": str(marks)}}
        )
        a = await _worker(shared_db, tmp_path / "a.log", KSER_STALL="1")
        procs.append(a)
        assert await asyncio.wait_for(a.wait(), 30) == -signal.SIGKILL
        b = await _worker(shared_db, tmp_path / "b.log")
        procs.append(b)
        run = await api.wait(run_id, timeout=60)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await api.close()
    assert run.info.status == "succeeded", run.info.error
    seen = [line.split() for line in marks.read_text().splitlines()]
    pid_a, pid_b = str(a.pid), str(b.pid)
    assert seen == [["first", pid_a], ["stall", pid_a], ["stall", pid_b], ["last", pid_b]]
    retval = run.info.output["retval"]
    assert retval == {"first": a.pid, "stall": b.pid, "last": b.pid}


async def test_the_example_runs_as_written(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "kser" / "dice.py"),
        f"sqlite:///{tmp_path / 'dice.db'}",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("SUCCESS {")
    log = err.decode()
    assert "Operation registry: loaded __main__.DiceLaunch" in log
    assert (
        len(
            re.findall(
                r"DiceRoll\.Success: __main__\.DiceRoll\[[0-9a-f-]+\]: You made a [1-6]", log
            )
        )
        == 3
    )
    assert re.search(r"Controller\.Success: __main__\.DiceLaunch\[[0-9a-f]+\]: You made a", log)


async def test_kser_messages_on_a_broker_start_one_run_each(db_url: str) -> None:
    """The seed's producer side: a message names its entrypoint; each message (by uuid) starts one
    run of that entrypoint's workflow, whichever workflows listen to the same subject."""
    url = broker_url("nats")
    subject = f"legato-test-kser-{os.urandom(6).hex()}"
    engine = Engine.open(db_url)
    engine.add_transport("bus", url)
    publisher = open_transport(url)
    try:
        async with engine:
            for wf in oregistry.workflows(transport="bus", subject=subject):
                await engine.register(wf)
            await publisher.connect()
            launch = {"uuid": "m-1", "entrypoint": "tests.integration.kser_ops.DiceLaunch"}
            roll = {
                "uuid": "m-2",
                "entrypoint": "tests.integration.kser_ops.DiceRoll",
                "params": {},
            }
            for message in (launch, launch, roll):  # the same uuid twice: one run
                await publisher.publish(subject, orjson.dumps(message), {})
            names = ("tests.integration.kser_ops.DiceLaunch", "tests.integration.kser_ops.DiceRoll")
            for _ in range(600):
                runs = [r for n in names for r in await engine.store.list_runs(n, None, 10)]
                if len(runs) == 2 and all(r.status == "succeeded" for r in runs):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a second run of m-1, were there one, would show by now
            runs = [r for n in names for r in await engine.store.list_runs(n, None, 10)]
            others = await engine.store.list_runs("tests.integration.kser_ops.Chain", None, 10)
    finally:
        await publisher.close()
        await remove(url, [subject])
    assert sorted((r.workflow, r.status, r.output["uuid"]) for r in runs) == [
        ("tests.integration.kser_ops.DiceLaunch", "succeeded", "m-1"),
        ("tests.integration.kser_ops.DiceRoll", "succeeded", "m-2"),
    ]
    assert others == []  # filtered out: not their entrypoint
