"""The web UI over HTTP against a real server: every page renders what it should from the package's
own assets, the hand-completion route, the live stream, and signing in when a token is set."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from legato.client import AsyncClient
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.testservice import LoopbackService
from tests.integration.ui_flows import approval, fails_once


async def _until(api: AsyncClient, run_id: str, step: str, status: str) -> dict[str, object]:
    for _ in range(300):
        run = await api.run(run_id)
        found = next(s for s in run["steps"] if s["name"] == step)
        if found["status"] == status:
            return dict(run)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{step} never became {status}: {run}")


async def test_the_pages_draw_workflows_runs_and_services(
    api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(approval("ui-pages"))
    run = await api.start("ui-pages", {"amount": 5}, wait=10)
    assert run["status"] == "succeeded"
    async with httpx.AsyncClient(base_url=server.url) as http:
        home = await http.get("/")
        assert home.status_code == 303 and home.headers["location"] == "/workflows"
        listed = await http.get("/workflows")
        assert listed.status_code == 200 and 'href="/workflows/ui-pages"' in listed.text
        second = approval("ui-pages") | {"description": "second version"}
        await api.apply(second)
        listed = await http.get("/workflows")
        for v in (1, 2):
            assert f'href="/workflows/ui-pages?version={v}"' in listed.text
        older = (await http.get("/workflows/ui-pages?version=1")).text
        assert "big orders wait for a person" in older and "Start run of v1" in older
        assert (await http.get("/workflows/ui-pages?version=9")).status_code == 404
        assert (await http.get("/workflows/ui-pages?version=x")).status_code == 400
        answer = await http.get("/workflows/ui-pages")
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        page = answer.text
        svg = page[page.index("<svg") : page.index("</svg>")]
        for step in ("fetch", "check", "approve", "auto", "finish"):
            assert f'data-step="{step}"' in svg
        assert len(re.findall(r'<path class="edge ', svg)) == 5  # fetch>check, check>2, 2>finish
        assert svg.count("edge-branch") == 2 and ">input.amount &gt; 100<" in svg
        assert "http · svc" in svg and "branch" in svg
        assert "runs when one succeeded" in svg and '<text class="trigger"' in svg  # finish
        assert "https://" not in page  # nothing from a CDN
        assert "Definition (v" in page and "&#34;otherwise&#34;" in page
        runs = (await http.get("/runs", params={"workflow": "ui-pages"})).text
        assert f'href="/runs/{run["id"]}"' in runs and "st-succeeded" in runs
        none = (await http.get("/runs", params={"workflow": "ui-pages", "status": "failed"})).text
        assert run["id"] not in none
        bad = await http.get("/runs", params={"status": "bogus"})
        assert bad.status_code == 400
        detail = (await http.get(f"/runs/{run['id']}")).text
        assert 'data-step="auto" data-kind="http" data-status="succeeded"' in detail
        assert 'data-step="approve" data-kind="http" data-status="skipped"' in detail
        data = detail[
            detail.index('id="run-data">') + 14 : detail.index(
                "</script>", detail.index('id="run-data"')
            )
        ]
        assert orjson.loads(data)["id"] == run["id"]
        assert (await http.get("/runs/" + "0" * 32)).status_code == 404
        services = (await http.get("/services")).text
        assert 'data-service="svc"' in services and "last 15 minutes" in services
        row = services[services.index('data-service="svc"') :]
        calls = int(re.search(r'class="calls">(\d+)<', row).group(1))  # type: ignore[union-attr]
        assert calls >= 3  # fetch, auto, finish
        for asset in ("/static/ui/ui.js", "/static/ui/ui.css"):
            assert (await http.get(asset)).status_code == 200


async def test_what_a_run_carries_is_never_markup(api: AsyncClient, server: ServerProcess) -> None:
    evil = "</script><img src=x onerror=alert(1)><!--"
    await api.apply(approval("ui-escape") | {"description": evil, "inputs": {}})
    run = await api.start("ui-escape", {"amount": 1, "note": evil}, wait=10)
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path in ("/workflows", "/workflows/ui-escape", f"/runs/{run['id']}"):
            page = (await http.get(path)).text
            assert "<img" not in page and "</script><" not in page, path
        detail = (await http.get(f"/runs/{run['id']}")).text
        start = detail.index('id="run-data">') + len('id="run-data">')
        data = orjson.loads(detail[start : detail.index("</script>", start)])
        assert data["input"]["note"] == evil  # intact once parsed


async def test_the_runs_list_pages_by_cursor(api: AsyncClient, server: ServerProcess) -> None:
    await api.apply(
        {
            "name": "ui-many",
            "steps": {"s": {"http": {"service": "svc", "path": "/echo"}}},
        }
    )
    ids = [(await api.start("ui-many", {}))["id"] for _ in range(53)]
    async with httpx.AsyncClient(base_url=server.url) as http:
        first = (await http.get("/runs", params={"workflow": "ui-many"})).text
        older = re.search(r'href="([^"]+)" id="older"', first)
        assert older is not None and 'id="newest"' not in first
        second = (await http.get(older.group(1).replace("&amp;", "&"))).text
        shown = set(re.findall(r'href="/runs/([0-9a-f]{32})"', first + second))
        assert shown == set(ids)
        assert 'id="older"' not in second and 'id="newest"' in second


async def test_a_waiting_callback_step_is_completed_by_hand(
    api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(approval("ui-approve"))
    run_id = (await api.start("ui-approve", {"amount": 500}))["id"]
    await _until(api, run_id, "approve", "waiting")
    base = f"/api/runs/{run_id}/steps"
    async with httpx.AsyncClient(base_url=server.url) as http:
        early = await http.post(f"{base}/finish/complete", json={"output": {}})
        assert early.status_code == 404 and early.json()["problems"][0]["path"] == "step"
        done = await http.post(f"{base}/fetch/complete", json={"output": {}})
        assert done.status_code == 409 and "succeeded" in done.json()["message"]
        both = await http.post(f"{base}/approve/complete", json={"output": 1, "error": "x"})
        assert both.status_code == 422
        odd = await http.post(f"{base}/approve/complete", json={"outputs": 1})
        assert odd.status_code == 422 and odd.json()["problems"][0]["path"] == "outputs"
        nobody = await http.post(f"/api/runs/{'0' * 32}/steps/approve/complete", json={"output": 1})
        assert nobody.status_code == 404
        ok = await http.post(f"{base}/approve/complete", json={"output": {"by": "ann"}})
        assert ok.status_code == 200 and ok.json()["attempt"] == 1
        again = await http.post(f"{base}/approve/complete", json={"output": {"by": "bob"}})
        assert again.status_code == 409
    ended = await api.run(run_id, wait=10)
    assert ended["status"] == "succeeded"
    approve = next(s for s in ended["steps"] if s["name"] == "approve")
    assert approve["output"] == {"by": "ann"}


async def test_the_event_stream_follows_a_run(api: AsyncClient, server: ServerProcess) -> None:
    await api.apply(approval("ui-live"))
    run_id = (await api.start("ui-live", {"amount": 500}))["id"]
    await _until(api, run_id, "approve", "waiting")
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        http.stream("GET", f"/runs/{run_id}/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        snaps = []
        async for line in stream.aiter_lines():
            if not line.startswith("data: "):
                continue
            snaps.append(orjson.loads(line[6:]))
            if len(snaps) == 1:
                assert snaps[0]["steps"]["approve"][0] == "waiting"
                await http.post(f"/api/runs/{run_id}/steps/approve/complete", json={"output": {}})
    # The stream ends by itself with the run (a browser tab does not keep a connection forever).
    assert snaps[-1]["status"] == "succeeded"
    assert snaps[-1]["steps"]["finish"][0] == "succeeded"
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get(f"/runs/{'0' * 32}/events")).status_code == 404
        ended = await http.get(f"/runs/{run_id}/events", timeout=5)  # answers, and closes
        assert ended.text.count("data: ") == 1
        refused = await http.get("/api/runs", params={"workflow": "x\x00y"})
        assert refused.status_code == 400 and refused.json()["problems"][0]["path"] == "workflow"
        assert (await http.get("/workflows/x%00y")).status_code == 404


async def test_retry_from_the_api_the_ui_uses(api: AsyncClient, server: ServerProcess) -> None:
    await api.apply(fails_once("ui-retry"))
    run = await api.start("ui-retry", {}, wait=10)
    assert run["status"] == "failed"
    async with httpx.AsyncClient(base_url=server.url) as http:
        page = (await http.get(f"/runs/{run['id']}")).text
        assert 'data-step="charge" data-kind="http" data-status="failed"' in page
        assert 'id="retry-run" data-when="failed cancelled" >' in page  # shown: not hidden


def _svc_counts(html: str) -> tuple[int, int, str]:
    row = html[html.index('data-service="svc"') :]
    found = re.search(
        r'class="calls">(\d+)<.*?class="errors">(\d+)<.*?class="rate">([^<]*)<', row, re.S
    )
    assert found is not None, row[:500]
    return int(found.group(1)), int(found.group(2)), found.group(3).strip()


async def test_the_services_page_counts_calls_and_errors(
    api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(fails_once("ui-counts"))
    async with httpx.AsyncClient(base_url=server.url) as http:
        calls, errors, _ = _svc_counts((await http.get("/services")).text)
        run = await api.start("ui-counts", {}, wait=10)  # reserve succeeds, charge fails
        assert run["status"] == "failed"
        await api.retry(run["id"])
        assert (await api.run(run["id"], wait=10))["status"] == "succeeded"  # charge, notify
        after, failed, rate = _svc_counts((await http.get("/services")).text)
    assert (after - calls, failed - errors) == (4, 1)
    assert rate.endswith("%")


async def test_the_stream_follows_a_run_that_a_worker_moves(
    shared_db: str, service: LoopbackService, tmp_path: Path
) -> None:
    """The API-only server holds no run: the page must learn of the worker's progress by the store."""
    front = start_server(tmp_path, "--api-only", db=shared_db, name="front")
    worker = start_server(
        tmp_path, "--public-url", front.url, db=shared_db, name="worker", command="worker"
    )
    try:
        async with AsyncClient(front.url) as api:
            await api.add_service({"name": "svc", "base_url": service.url, "timeout": 5})
            await api.apply(approval("ui-shared"))
            run_id = (await api.start("ui-shared", {"amount": 500}))["id"]
            await _until(api, run_id, "approve", "waiting")
            async with (
                httpx.AsyncClient(base_url=front.url, timeout=15) as http,
                http.stream("GET", f"/runs/{run_id}/events") as stream,
            ):
                last: dict[str, Any] = {}
                async for line in stream.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    last = orjson.loads(line[6:])
                    if last["steps"]["approve"][0] == "waiting" and last["status"] == "running":
                        done = await http.post(
                            f"/api/runs/{run_id}/steps/approve/complete", json={"output": {}}
                        )
                        assert done.status_code == 200  # through the run's inbox, to the worker
                    if last["status"] == "succeeded":
                        break
            assert last["steps"]["finish"][0] == "succeeded"
    finally:
        worker.stop()
        front.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("ui-guarded"), env={"LEGATO_API_TOKEN": "s3cret"}, name="guarded"
    )
    yield proc
    proc.stop()


def test_with_a_token_the_ui_asks_for_it_and_shows_nothing_before(guarded: ServerProcess) -> None:
    with httpx.Client(base_url=guarded.url) as http:
        for path in ("/", "/workflows", "/runs?status=failed", "/services"):
            bare = http.get(path)
            assert bare.status_code == 303, path
            assert bare.headers["location"].startswith("/login?next=%2F")
        assert http.get(f"/runs/{'0' * 32}/events").status_code == 401
        form = http.get("/login?next=/runs")
        assert form.status_code == 200 and 'name="token"' in form.text
        assert 'value="/runs"' in form.text
        assert http.get("/login?next=//evil.example").text.count('value="/"') == 1
        assert http.get("/static/ui/ui.js").status_code == 200  # no data in it
        wrong = http.post("/login", data={"token": "nope", "next": "/runs"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        right = http.post("/login", data={"token": "s3cret", "next": "/runs"})
        assert right.status_code == 303 and right.headers["location"] == "/runs"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "s3cret" not in cookie
        assert http.get("/runs").status_code == 200
        assert http.get("/api/runs").status_code == 200
        service = {"name": "x", "base_url": "http://127.0.0.1:9"}
        forged = http.post("/api/services", json=service)
        assert forged.status_code == 403
        assert forged.json()["problems"][0]["path"] == "X-Legato-UI"
        made = http.post("/api/services", json=service, headers={"X-Legato-UI": "1"})
        assert made.status_code == 201
        out = http.post("/logout")
        assert out.status_code == 303
        assert http.get("/runs").status_code == 303
