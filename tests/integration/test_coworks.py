"""The seed's two CoWorks DAG files (examples/coworks), imports changed and nothing else, run end to
end on an Engine (SQLite and PostgreSQL) against real local services and moto's S3 server."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from legato import Engine, Service
from legato.compat.coworks import (
    BranchTechMicroServiceOperator,
    TechMicroServiceAsyncGroup,
    TechMicroServiceOperator,
    biz,
    get_current_context,
    task,
)
from legato.engine.ids import scheduled_run_id
from legato.engine.results import S3Results
from legato.model.schedule import iso
from legato.model.workflow import Workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "coworks"


def load(name: str, module_name: str | None = None) -> ModuleType:
    """Import an example file as a fresh module (its workflow is built at import); a process
    importing it again under the same `module_name` finds its tasks under the same names."""
    module_name = module_name or f"coworks_{name}_{uuid.uuid4().hex[:8]}"
    path = (
        EXAMPLES / f"{name}.py" if name == "coworks_services" else EXAMPLES / "dags" / f"{name}.py"
    )
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


samples_module = load("coworks_services")


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
async def samples(s3: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    svc = samples_module.Samples(s3)
    await svc.start()
    await samples_module.create_bucket(s3)
    monkeypatch.setenv("LEGATO_COWORKS_API_URL", svc.api_url)
    monkeypatch.setenv("LEGATO_COWORKS_POLL_EVERY", "0.1")
    yield svc
    await svc.stop()


@pytest.fixture
async def engine(db_url: str, s3: str, samples: Any) -> AsyncIterator[Engine]:
    eng = Engine.open(db_url)
    eng.results = S3Results(s3)
    async with eng:
        for name, url in samples.services().items():
            await eng.put_service(Service(name=name, base_url=url, timeout=5))
        yield eng


async def test_my_first_biz_sends_the_invoice_it_created(engine: Engine, samples: Any) -> None:
    wf: Workflow = load("my_first_biz").my_first_biz
    assert wf.name == "my_first_biz" and wf.schedule is None
    assert wf.notify.email == ("gdoumenc@neorezo.io",) and wf.notify.email_on == {"failure"}
    await engine.register(wf)
    data = {"amount": 12, "customer": "ada@example.com"}
    run = await engine.run("my_first_biz", {"data": data}, timeout=20)
    assert run.info.status == "succeeded", run.steps
    assert samples.calls[0]["json"] == data  # the conf's value itself (native), not its text
    assert samples.sent == [
        {"to": "ada@example.com", "invoice": {"invoice": "INV-0001", "amount": 12}}
    ]
    assert run.steps["mail_error"].status == "skipped"


async def test_my_first_biz_mails_the_error_of_a_refused_invoice(
    engine: Engine, samples: Any
) -> None:
    await engine.register(load("my_first_biz").my_first_biz)
    run = await engine.run("my_first_biz", {"data": {"amount": 0}}, timeout=20)
    assert run.info.status == "succeeded", run.steps
    assert run.steps["create_invoice"].output["status"] == 400
    assert run.steps["sent_to_customer"].status == "skipped"
    assert samples.sent == [
        {"to": "billing@neorezo.io", "error": {"error": "an invoice needs a positive amount"}}
    ]


async def test_the_quickstart_reads_the_async_result_from_s3(
    engine: Engine, samples: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    wf: Workflow = load("first").first
    assert wf.schedule is not None and wf.schedule.cron == "0 0 * * *"
    assert wf.schedule.catchup is False
    assert list(wf.steps) == ["simple__call", "simple__read", "print_result"]
    await engine.register(wf)
    run = await engine.run("first", {}, timeout=20)
    assert run.info.status == "succeeded", run.steps
    body = '{"entry": "/", "stage": "dev"}'
    assert run.steps["simple__read"].output == body
    assert body in capsys.readouterr().out  # print_result printed ti.xcom_pull('simple.read')
    call = next(c for c in samples.calls if c["path"] == "/gw/xxxx/dev/")
    assert call["headers"]["Authorization"] == "token"
    assert call["headers"]["InvocationType"] == "Event"
    assert call["headers"]["X-CWS-S3Bucket"] == "coworks-airflow"
    assert call["headers"]["X-CWS-S3Key"].endswith("/simple__call/1.json")
    # '@daily' without catchup: registering it ran yesterday's interval, the latest one over.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = (today - timedelta(days=1)).timestamp()
    run_id = scheduled_run_id("first", yesterday)
    for _ in range(200):  # the scheduler fires it on its own time
        if await engine.store.run_status(run_id) is not None:
            break
        await asyncio.sleep(0.05)
    scheduled = await engine.wait(run_id, timeout=20)
    assert scheduled.info.status == "succeeded", scheduled.steps
    assert scheduled.info.input["schedule"]["interval_start"] == iso(yesterday)


async def test_groups_branches_and_tasks_work_together(engine: Engine, samples: Any) -> None:
    def prepare(n: int) -> dict[str, int]:
        return {"n": n * 10}

    @biz(schedule_interval=None, params={"who": "ada"})
    def together(amount: int = 0) -> None:
        job = TechMicroServiceAsyncGroup(
            "job",
            transformer=prepare,
            op_kwargs={"n": 4},
            method="POST",
            api_id="api",
            stage="v2",
            token="token",
            entry="/job",
        )
        create = TechMicroServiceOperator(
            task_id="create",
            cws_name="neorezo-billing_invoice-eshop",
            method="POST",
            entry="/invoice",
            json={"amount": amount, "day": "{{ ds }}"},
            raise_400_errors=False,
        )
        check = BranchTechMicroServiceOperator(
            task_id="check",
            cws_task_id="create",
            on_failure="refused",
            on_check="big",
            response_check=lambda result: result["amount"] > 100,
            on_success="small",
        )

        @task()
        def big() -> str:
            return "big"

        @task()
        def small() -> str:
            ctx = get_current_context()
            return f"small for {ctx['params']['who']} on {ctx['ds']}"

        @task()
        def refused() -> str:
            return "refused"

        @task(trigger_rule="none_failed_min_one_success")
        def report(chosen: list[Any]) -> dict[str, Any]:
            ti = get_current_context()["ti"]
            return {"job": ti.xcom_pull(task_ids="job.read"), "chosen": chosen}

        branches = [big(), small(), refused()]
        job >> create >> check >> branches
        report([b for b in branches]) << branches

    wf = together()
    await engine.register(wf)
    run = await engine.run("together", {"amount": 150}, timeout=20)
    assert run.info.status == "succeeded", run.steps
    assert run.steps["small"].status == "skipped" and run.steps["refused"].status == "skipped"
    report = run.steps["report"].output
    assert report["chosen"] == ["big", None, None]
    assert orjson.loads(report["job"]) == {"entry": "/job", "stage": "v2", "json": {"n": 40}}
    today = datetime.fromtimestamp(run.info.created_at, UTC).strftime("%Y-%m-%d")
    assert samples.calls[-1]["json"] == {"amount": 150, "day": today}

    run = await engine.run("together", {"amount": 50}, timeout=20)
    assert run.info.status == "succeeded", run.steps
    assert run.steps["report"].output["chosen"] == [None, f"small for ada on {today}", None]
    run = await engine.run("together", {}, timeout=20)
    assert run.steps["report"].output["chosen"] == [None, None, "refused"]


async def test_a_restart_while_waiting_for_the_s3_result_resumes_the_wait(
    db_url: str, s3: str, samples: Any
) -> None:
    """The call step is waiting for its object when its engine stops; the next engine on the same
    database finds the result and reads it, without calling the service again."""

    async def open_engine() -> Engine:
        eng = Engine.open(db_url)
        eng.results = S3Results(s3)
        await eng.start()
        await eng.register(load("first", "coworks_first_restarted").first)  # as --dags does
        return eng

    first_engine = await open_engine()
    try:
        run_id = await first_engine.start_run("first", {})
        for _ in range(200):
            state = await first_engine.get_run(run_id)
            if state.steps.get("simple__call") and state.steps["simple__call"].status == "waiting":
                break
            await asyncio.sleep(0.02)
        assert state.steps["simple__call"].status == "waiting"
    finally:
        await first_engine.close()
    calls = len(samples.calls)
    second_engine = await open_engine()
    try:
        run = await second_engine.wait(run_id, timeout=20)
    finally:
        await second_engine.close()
    assert run.info.status == "succeeded", run.steps["print_result"].error
    assert run.steps["simple__read"].output == '{"entry": "/", "stage": "dev"}'
    manual_calls = [
        c for c in samples.calls[calls:] if run_id in c["headers"].get("X-CWS-S3Key", "")
    ]
    assert manual_calls == []  # the wait resumed: the service was not asked again
