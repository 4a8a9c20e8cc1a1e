"""Kser on a real `legato serve --dags ...`, as a user runs it: the seed's consumer side reading Kser
messages from Kafka (tansu, started by the tests), and a failing task's traceback in the step logs
shown by the API."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from legato.transports import open_transport
from tests.integration.brokers import broker_url
from tests.integration.serverprocess import start_server

ROOT = Path(__file__).resolve().parents[2]
ROLL = "legato_dags.dice.DiceRoll"
LAUNCH = "legato_dags.dice.DiceLaunch"


async def wait_for(check: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out waiting")


async def test_a_kser_message_on_kafka_starts_one_run_of_its_entrypoint(tmp_path: Path) -> None:
    """The seed's producer shape, sent twice with one uuid, to the example served as documented
    in examples/kser/dice.py: one run of DiceRoll, none of DiceLaunch, and Kser's console lines."""
    url = broker_url("kafka")
    topic = f"legato-test-kser-{uuid.uuid4().hex[:12]}"
    server = start_server(
        tmp_path,
        "--dags",
        str(ROOT / "examples" / "kser"),
        "--transport",
        f"kafka={url}",
        env={"KSER_TRANSPORT": "kafka", "KSER_TOPIC": topic},
    )
    http = httpx.AsyncClient(timeout=10)
    try:
        listening = (await http.get(server.url + "/api/triggers")).json()
        assert {(s["workflow"], s["topic"]) for s in listening["subscribed"]} == {
            (ROLL, topic),
            (LAUNCH, topic),
        }, listening
        message_uuid = str(uuid.uuid4())
        message = {"uuid": message_uuid, "entrypoint": ROLL, "params": {}}
        publisher = open_transport(url)
        await publisher.connect()
        try:
            for _ in range(2):  # the same message twice: one run
                await publisher.publish(topic, orjson.dumps(message), {})
        finally:
            await publisher.close()

        async def both_seen() -> bool:
            found = (await http.get(server.url + "/api/triggers")).json()["messages"]
            # DiceRoll's trigger starts one run; DiceLaunch's (its own group) filters both out
            return bool(found["started"] + found["duplicate"] + found["filtered"] >= 4)

        await wait_for(both_seen)
        runs = (await http.get(f"{server.url}/api/runs", params={"workflow": ROLL})).json()
        (run,) = runs["runs"]

        async def finished() -> bool:
            got = (await http.get(f"{server.url}/api/runs/{run['id']}")).json()
            return bool(got["status"] in ("succeeded", "failed"))

        await wait_for(finished)
        detail = (await http.get(f"{server.url}/api/runs/{run['id']}")).json()
        assert detail["status"] == "succeeded", detail
        assert detail["input"] == message
        assert detail["output"]["uuid"] == message_uuid
        assert re.fullmatch(r"You made a [1-6]", detail["output"]["stdout"])
        launches = (await http.get(f"{server.url}/api/runs", params={"workflow": LAUNCH})).json()
        assert launches["runs"] == []  # filtered out: not its entrypoint
        counts = (await http.get(server.url + "/api/triggers")).json()["messages"]
        assert counts["started"] == 1 and counts["duplicate"] == 1, counts
        assert counts["filtered"] == 2, counts  # DiceLaunch's trigger saw both and passed
    finally:
        await http.aclose()
        server.stop()
    out = server.output()
    rolled = re.escape(f"{ROLL}[{message_uuid}]: You made a ")
    assert len(re.findall(rf"INFO +DiceRoll\.Success: {rolled}[1-6]", out)) == 1, out
    assert len(re.findall(rf"INFO +Controller\.Success: {rolled}[1-6]", out)) == 1, out


RAISES = """
from legato.compat.kser import OperationRegistry, Result, Task

oregistry = OperationRegistry()


@oregistry.subscribe
class Lookup(Task):
    def run(self):
        table = {}
        return Result(uuid=self.uuid, stdout=table[self.params["key"]])


oregistry.export(globals())
"""


async def test_a_task_that_raises_shows_its_traceback_in_the_run_logs(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "lookup.py").write_text(RAISES)
    server = start_server(tmp_path, "--dags", str(folder))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            name = "legato_dags.lookup.Lookup"
            started = await http.post(
                f"/api/workflows/{name}/runs", json={"input": {"params": {"key": "gone"}}}
            )
            assert started.status_code in (200, 201, 202), started.text
            run_id = started.json()["id"]

            async def ended() -> bool:
                got = (await http.get(f"/api/runs/{run_id}")).json()
                return bool(got["status"] in ("succeeded", "failed"))

            await wait_for(ended, 30)
            detail = (await http.get(f"/api/runs/{run_id}")).json()
            logs = (await http.get(f"/api/runs/{run_id}/logs")).json()["logs"]
    finally:
        server.stop()
    assert detail["status"] == "failed"
    (step,) = detail["steps"].values() if isinstance(detail["steps"], dict) else detail["steps"]
    assert step["attempt"] == 1  # a failed task is an answer: not retried
    assert "Lookup.Failed: legato_dags.lookup.Lookup[" in step["error"]["message"]
    assert "KeyError: 'gone'" in step["error"]["message"]
    messages = [line["message"] for line in logs]
    assert any(m.startswith("Lookup.Failed: ") for m in messages), messages
    assert any(m.startswith("Controller.Failed: ") for m in messages), messages
    (trace,) = [line for line in logs if line["source"] == "traceback"]
    text = trace["message"]
    assert "lookup.py" in text and "in run" in text  # the task's own frame
    assert 'stdout=table[self.params["key"]]' in text
    assert "KeyError: 'gone'" in text
    assert "TaskFailed: Lookup.Failed: " in text  # and the step's error, caused by it


async def test_the_example_serves_as_documented_without_a_broker(tmp_path: Path) -> None:
    """`legato serve --dags examples/kser`, then a run started through the API (no KSER_TRANSPORT:
    the workflows carry no trigger, so the server needs no --transport)."""
    server = start_server(tmp_path, "--dags", str(ROOT / "examples" / "kser"))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/api/triggers")).json()["subscribed"] == []
            started = await http.post(
                f"/api/workflows/{LAUNCH}/runs", json={"input": {"params": {}}}
            )
            assert started.status_code in (200, 201, 202), started.text
            run_id = started.json()["id"]

            async def ended() -> bool:
                got = (await http.get(f"/api/runs/{run_id}")).json()
                return bool(got["status"] in ("succeeded", "failed"))

            await wait_for(ended, 30)
            detail = (await http.get(f"/api/runs/{run_id}")).json()
    finally:
        server.stop()
    assert detail["status"] == "succeeded", detail
    assert re.fullmatch(r"(You made a [1-6]\n){2}You made a [1-6]", detail["output"]["stdout"])
    out = server.output()
    assert "Operation registry: loaded legato_dags.dice.DiceLaunch" in out
    assert re.search(rf"Controller\.Success: {re.escape(LAUNCH)}\[{run_id}\]: You made a", out)
