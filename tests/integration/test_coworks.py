"""The seed's two CoWorks DAG files (examples/coworks), imports changed and nothing else, run end to
end on an Engine (SQLite and PostgreSQL) against real local services and moto's S3 server."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aiohttp import web

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


# --- what the second review found (each against a real local service) --------------------------


class Local:
    """A service under /svc/v1: echoes what it got; `/flaky/<id>?fail=N&status=S` answers S the
    first N times; `/redirect` sends the client to `other` (another origin); a request outside
    /svc/v1 is recorded as an escape."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.escapes: list[str] = []
        self.tries: dict[str, int] = {}
        self.other = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not request.path.startswith("/svc/v1/"):
            self.escapes.append(request.path)
            return web.json_response({"escaped": request.path})
        call = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": dict(request.headers),
            "body": await request.text(),
        }
        self.calls.append(call)
        tail = request.path[len("/svc/v1") :]
        if tail.startswith("/flaky/"):
            n = self.tries[tail] = self.tries.get(tail, 0) + 1
            if n <= int(request.query.get("fail", "0")):
                return web.json_response({"try": n}, status=int(request.query["status"]))
            return web.json_response({"try": n})
        if tail == "/redirect":
            raise web.HTTPFound(self.other + "/svc/v1/landed")
        return web.json_response({"path": tail, "query": call["query"], "body": call["body"]})


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def local() -> AsyncIterator[tuple[Local, str]]:
    svc = Local()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", svc.handle)
    runner, url = await _serve(app)
    other = Local()
    other_app = web.Application()
    other_app.router.add_route("*", "/{tail:.*}", other.handle)
    other_runner, svc.other = await _serve(other_app)
    svc.redirected = other  # type: ignore[attr-defined]
    yield svc, url
    await runner.cleanup()
    await other_runner.cleanup()


@pytest.fixture
async def local_engine(db_url: str, local: tuple[Local, str]) -> AsyncIterator[Engine]:
    async with Engine.open(db_url) as eng:
        await eng.put_service(Service(name="echo", base_url=f"{local[1]}/svc/v1", timeout=5))
        yield eng


async def test_a_task_reads_its_upstream_and_is_not_held_to_the_others_sizes(
    local_engine: Engine,
) -> None:
    @task
    def part(i: int) -> dict[str, Any]:
        return {"i": i, "blob": "x" * 150_000}

    @task
    def trivial(ti: Any = None, ds: Any = None, **context: Any) -> dict[str, Any]:
        return {"ti": ti.task_id, "ds": ds, "run": context["dag_run"].run_id}

    @task
    def small() -> int:
        return 7

    @task
    def reader() -> Any:
        ti = get_current_context()["ti"]
        return ti.xcom_pull(task_ids="small")

    @task
    def greedy() -> Any:
        return get_current_context()["ti"].xcom_pull(task_ids="huge")

    @task
    def huge() -> str:
        return "y" * 700_000

    @biz(schedule_interval=None)
    def mid() -> None:
        [part(i) for i in range(8)] >> trivial()
        small() >> reader()
        huge() >> greedy()

    await local_engine.register(mid())
    run = await local_engine.run("mid", {}, timeout=30)
    assert run.steps["trivial"].status == "succeeded", run.steps["trivial"].error
    out = run.steps["trivial"].output
    assert out["ti"] == "trivial" and out["run"] == run.info.id and len(out["ds"]) == 10
    assert run.steps["reader"].output == 7
    error = run.steps["greedy"].error
    assert error is not None and "task_ids='huge'" in error["message"]
    assert "too large" in error["message"]


async def test_entry_from_the_conf_cannot_leave_the_services_path(
    local_engine: Engine, local: tuple[Local, str]
) -> None:
    @biz(schedule_interval=None)
    def escape() -> None:
        TechMicroServiceOperator(
            task_id="a", cws_name="echo", entry="{{ dag_run.conf['x'] }}", headers={"X-Key": "k"}
        )

    await local_engine.register(escape())
    for path in ("../../admin", "x/../../../admin", "%2e%2e/%2e%2e/admin", "..%2F..%2Fadmin"):
        run = await local_engine.run("escape", {"x": path}, timeout=10)
        error = run.steps["a"].error
        assert run.info.status == "failed" and error is not None, path
        assert error["kind"] == "config" and "'..'" in error["message"], error
    run = await local_engine.run("escape", {"x": "fine/a..b"}, timeout=10)
    assert run.info.status == "succeeded"
    assert local[0].escapes == [] and local[0].calls[-1]["path"] == "/svc/v1/fine/a..b"


def _check(threshold: int, result: Any) -> bool:
    return bool(result["query"].get("n", "0") > str(threshold))


async def test_branches_skip_unnamed_tasks_and_calls_take_data_and_query_templates(
    local_engine: Engine, local: tuple[Local, str]
) -> None:
    import functools

    @biz(schedule_interval=None)
    def shapes() -> None:
        call = TechMicroServiceOperator(
            task_id="call", cws_name="echo", data={"n": "{{ dag_run.conf['n'] }}"}
        )
        branch = BranchTechMicroServiceOperator(
            task_id="branch",
            cws_task_id="call",
            on_check="big",
            response_check=functools.partial(_check, 4),
            on_success="small",
        )
        query = TechMicroServiceOperator(
            task_id="query", cws_name="echo", query_params="{{ dag_run.conf['q'] }}"
        )
        (
            call
            >> branch
            >> [
                TechMicroServiceOperator(task_id="big", cws_name="echo"),
                TechMicroServiceOperator(task_id="small", cws_name="echo"),
                TechMicroServiceOperator(task_id="unnamed", cws_name="echo"),
            ]
        )
        call >> query

    await local_engine.register(shapes())
    run = await local_engine.run("shapes", {"n": "5", "q": {"k": "v"}}, timeout=10)
    assert run.info.status == "succeeded", run.steps
    status = {n: s.status for n, s in run.steps.items()}
    assert status["big"] == "succeeded" and status["small"] == "skipped"
    assert status["unnamed"] == "skipped" and status["query"] == "succeeded"
    assert {"n": "5"} in [c["query"] for c in local[0].calls]
    assert {"k": "v"} in [c["query"] for c in local[0].calls]
    run = await local_engine.run("shapes", {"n": "1", "q": {}}, timeout=10)
    status = {n: s.status for n, s in run.steps.items()}
    assert status["big"] == "skipped" and status["small"] == "succeeded"
    assert status["unnamed"] == "skipped"


async def test_calls_are_retried_as_airflow_retries_a_task(
    local_engine: Engine, local: tuple[Local, str]
) -> None:
    @biz(
        schedule_interval=None,
        default_args={"retries": 2, "retry_delay": timedelta(milliseconds=50)},
    )
    def retried() -> None:
        TechMicroServiceOperator(
            task_id="s500", cws_name="echo", entry="/flaky/a?fail=2&status=500"
        )
        TechMicroServiceOperator(
            task_id="s404", cws_name="echo", entry="/flaky/b?fail=1&status=404"
        )
        TechMicroServiceOperator(
            task_id="kept",
            cws_name="echo",
            entry="/flaky/c?fail=1&status=404",
            raise_400_errors=False,
        )
        TechMicroServiceOperator(
            task_id="gives_up", cws_name="echo", entry="/flaky/d?fail=9&status=503", retries=1
        )

    await local_engine.register(retried())
    run = await local_engine.run("retried", {}, timeout=20)
    steps = run.steps
    assert steps["s500"].status == "succeeded" and steps["s500"].output["body"] == {"try": 3}
    assert steps["s404"].status == "succeeded" and steps["s404"].output["body"] == {"try": 2}
    assert steps["kept"].output["status"] == 404  # a success with raise_400_errors=False
    assert steps["gives_up"].status == "failed" and local[0].tries["/flaky/d"] == 2


async def test_a_redirect_to_another_origin_drops_the_operators_headers(
    local_engine: Engine, local: tuple[Local, str]
) -> None:
    @biz(schedule_interval=None)
    def moved() -> None:
        TechMicroServiceOperator(
            task_id="a", cws_name="echo", entry="/redirect", headers={"X-Api-Key": "secret"}
        )

    await local_engine.register(moved())
    run = await local_engine.run("moved", {}, timeout=10)
    assert run.info.status == "succeeded", run.steps["a"].error
    other: Local = local[0].redirected  # type: ignore[attr-defined]
    landed = other.calls[-1]
    assert landed["path"] == "/svc/v1/landed"
    assert "X-Api-Key" not in landed["headers"] and "Authorization" not in landed["headers"]


async def test_s3_results_are_bounded_and_a_refusal_fails_at_once(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiobotocore.session import get_session

    monkeypatch.setenv("LEGATO_S3_MAX_RESULT", "1000")
    session = get_session()
    async with session.create_client("s3", endpoint_url=s3, region_name="us-east-1") as client:
        await client.create_bucket(Bucket="bounded")
        await client.put_object(Bucket="bounded", Key="small", Body=b'{"ok": 1}')
        await client.put_object(Bucket="bounded", Key="big", Body=b"x" * 5000)
    results = S3Results(s3)
    try:
        small = await results.fetch("bounded", "small")
        assert small is not None and small.ok and small.output == {"ok": 1}
        assert await results.fetch("bounded", "missing") is None  # not written yet: wait on
        big = await results.fetch("bounded", "big")
        assert big is not None and not big.ok and big.error is not None
        assert big.error["kind"] == "limit" and "5000 bytes" in big.error["message"]
    finally:
        await results.close()

    async def denied(request: web.Request) -> web.Response:
        body = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        return web.Response(status=403, text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", denied)
    runner, url = await _serve(app)
    results = S3Results(url)
    try:
        refused = await results.fetch("bounded", "k")
        assert refused is not None and refused.error is not None
        assert refused.error["kind"] == "config" and "AccessDenied" in refused.error["message"]
    finally:
        await results.close()
        await runner.cleanup()


BIZ_FILE = """
from datetime import datetime, timedelta

from legato.compat.coworks import TechMicroServiceOperator, biz, get_current_context, task


@biz(
    default_args={"retries": 1, "retry_delay": timedelta(seconds=0.1)},
    start_date=datetime(2023, 1, 1),
    schedule_interval=None,
    render_template_as_native_obj=True,
)
def billing_biz():
    create = TechMicroServiceOperator(
        task_id="create",
        cws_name="billing",
        method="POST",
        entry="/invoice",
        json="{{ dag_run.conf['data'] }}",
    )

    @task()
    def print_result():
        ti = get_current_context()["ti"]
        result = ti.xcom_pull(task_ids="create")
        print(result)
        return result["invoice"]

    create >> print_result


billing_biz = billing_biz()
"""


async def test_serve_dags_runs_a_biz_whose_cws_name_the_coworks_directory_resolves(
    tmp_path: Path,
) -> None:
    """As a CoWorks user deploys it: a folder of @biz files under `legato serve --dags`, with the
    CoWorks directory service as the source of the services `cws_name` names."""
    from legato.client import AsyncClient
    from tests.integration.serverprocess import start_server
    from tests.integration.test_external_directory import TOKEN, Directory, running

    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "billing.py").write_text(BIZ_FILE)
    directory = Directory()
    app = web.Application()
    app.router.add_get("/url/{name}", directory.lookup)
    app.router.add_post("/invoice", directory.invoice)
    async with running(app) as url:
        directory.entries["billing"] = {"url": url, "token": TOKEN}
        server = await asyncio.to_thread(
            start_server, tmp_path, "--dags", str(folder), "--directory-url", url
        )
        try:
            async with AsyncClient(server.url) as api:
                run = await api.start("billing_biz", {"data": {"order": "A-7"}}, wait=30)
                assert run["status"] == "succeeded", run
                shown = await api.run(run["id"])
                steps = {s["name"]: s for s in shown["steps"]}
                assert steps["print_result"]["output"] == "INV-A-7", shown
        finally:
            await asyncio.to_thread(server.stop)
    assert directory.asked == ["billing"] and directory.calls == [TOKEN]
    assert "billing_biz v1 (new version) from billing.py" in server.output()
