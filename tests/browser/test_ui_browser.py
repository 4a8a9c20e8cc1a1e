"""The UI in headless Chromium: open a run and see its graph, watch steps turn green as the run
moves (without a reload), complete an approval by hand, retry a failed run, start runs with
checked input, cancel, filter, and sign in when the server has a token."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.async_api import Page, expect

from legato.client import AsyncClient
from tests.browser.conftest import shot
from tests.integration.serverprocess import ServerProcess, start_server
from tests.integration.ui_flows import approval, fails_once


def node(page: Page, step: str, status: str) -> str:
    return f'svg.graph g.node[data-step="{step}"][data-status="{status}"]'


async def test_a_run_page_shows_the_graph_and_turns_steps_green_live(
    page: Page, api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(approval("b-live"))
    run_id = (await api.start("b-live", {"amount": 500}))["id"]
    await page.goto(f"{server.url}/runs/{run_id}")
    await expect(page.locator("main[data-live='1']")).to_have_count(1)  # the stream is open
    await expect(page.locator("svg.graph g.node")).to_have_count(5)
    await expect(page.locator("svg.graph path.edge")).to_have_count(5)
    await expect(page.locator(node(page, "approve", "waiting"))).to_have_count(1)
    await expect(page.locator(node(page, "auto", "skipped"))).to_have_count(1)
    await page.evaluate("window.notReloaded = true")
    await page.click('g.node[data-step="fetch"]')
    await expect(page.locator("#step-panel")).to_contain_text("Response")
    await shot(page, "run-waiting")
    # Someone else (here: the API) approves: the page hears of it and colours the steps.
    async with httpx.AsyncClient(base_url=server.url) as http:
        done = await http.post(
            f"/api/runs/{run_id}/steps/approve/complete", json={"output": {"by": "api"}}
        )
        assert done.status_code == 200
    await expect(page.locator(node(page, "approve", "succeeded"))).to_have_count(1)
    await expect(page.locator(node(page, "finish", "succeeded"))).to_have_count(1)
    await expect(page.locator("#run-status")).to_have_text("succeeded")
    await expect(page.locator("#run-finished")).to_contain_text("finished 20")
    await expect(page.locator("#timeline .tl-row")).to_have_count(4)  # all but auto (skipped)
    assert await page.evaluate("window.notReloaded") is True
    await shot(page, "run-succeeded")


async def test_an_approval_is_completed_by_hand_from_the_step_panel(
    page: Page, api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(approval("b-approve"))
    run_id = (await api.start("b-approve", {"amount": 900}))["id"]
    await page.goto(f"{server.url}/runs/{run_id}")
    await expect(page.locator(node(page, "approve", "waiting"))).to_have_count(1)
    await page.click('g.node[data-step="approve"]')
    await expect(page.locator("#complete-form")).to_be_visible()
    await page.fill("#complete-output", "not json")
    await page.click("#complete-ok")
    await expect(page.locator("#complete-message")).to_contain_text("not valid JSON")
    await page.fill("#complete-output", '{"approved_by": "ann"}')
    await shot(page, "approve-by-hand")
    await page.click("#complete-ok")
    await expect(page.locator(node(page, "approve", "succeeded"))).to_have_count(1)
    await expect(page.locator("#run-status")).to_have_text("succeeded")
    await expect(page.locator("#step-panel")).to_contain_text("approved_by")
    run = await api.run(run_id)
    assert next(s for s in run["steps"] if s["name"] == "approve")["output"] == {
        "approved_by": "ann"
    }


async def test_a_failed_run_is_retried_from_its_failed_step(
    page: Page, api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(fails_once("b-retry"))
    run = await api.start("b-retry", {}, wait=10)
    assert run["status"] == "failed"
    await page.goto(f"{server.url}/runs/{run['id']}")
    await expect(page.locator(node(page, "charge", "failed"))).to_have_count(1)
    notify = next(s for s in run["steps"] if s["name"] == "notify")["status"]
    assert notify in ("pending", "skipped", "cancelled")
    await expect(page.locator(node(page, "notify", notify))).to_have_count(1)
    await expect(page.locator("#run-error")).to_be_visible()
    await page.click('g.node[data-step="charge"]')
    await expect(page.locator("#step-panel")).to_contain_text("Error")
    await expect(page.locator("#step-panel table.attempts tr")).to_have_count(2)  # head + 1
    await shot(page, "run-failed")
    await expect(page.locator("#cancel-run")).to_be_hidden()
    await page.click("#retry-run")
    await expect(page.locator(node(page, "charge", "succeeded"))).to_have_count(1)
    await expect(page.locator(node(page, "notify", "succeeded"))).to_have_count(1)
    await expect(page.locator("#run-status")).to_have_text("succeeded")
    await expect(page.locator("#retry-run")).to_be_hidden()
    await expect(page.locator("#run-error")).to_be_hidden()
    # The timeline shows both attempts of charge: the failed one and the one after the retry.
    await expect(page.locator('#timeline .tl-row[data-step="charge"] .tl-bar')).to_have_count(2)


async def test_starting_a_run_checks_its_input_inline(
    page: Page, api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(approval("b-start"))
    await page.goto(f"{server.url}/workflows")
    await page.click("text=b-start")
    await expect(page.locator("svg.graph g.node")).to_have_count(5)
    await expect(page.locator("svg.graph text.edge-label")).to_have_count(2)
    await page.fill("#start-input", "{oops")
    await page.click("#start-form button[type=submit]")
    await expect(page.locator("#start-error")).to_contain_text("not valid JSON")
    await page.fill("#start-input", '{"amount": "lots"}')
    await page.click("#start-form button[type=submit]")
    await expect(page.locator("#start-error")).to_contain_text("input.amount")
    await shot(page, "workflow")
    await page.fill("#start-input", '{"amount": 3}')
    await page.click("#start-form button[type=submit]")
    await page.wait_for_url(f"{server.url}/runs/*")
    await expect(page.locator("#run-status")).to_have_text("succeeded")


async def test_cancel_filter_and_services(
    page: Page, api: AsyncClient, server: ServerProcess
) -> None:
    await api.apply(approval("b-cancel"))
    run_id = (await api.start("b-cancel", {"amount": 500}))["id"]
    await page.goto(f"{server.url}/runs/{run_id}")
    await expect(page.locator(node(page, "approve", "waiting"))).to_have_count(1)
    await page.click("#cancel-run")
    await expect(page.locator("#run-status")).to_have_text("cancelled")
    await expect(page.locator("#retry-run")).to_be_visible()
    await page.goto(f"{server.url}/runs")
    await page.select_option("#filter-workflow", "b-cancel")
    await page.select_option("#filter-status", "cancelled")
    await page.click(".filters button")
    await expect(page.locator("table.runs tbody tr")).to_have_count(1)
    await expect(page.locator("table.runs")).to_contain_text(run_id[:12])
    await page.goto(f"{server.url}/runs")
    await shot(page, "runs")
    await page.goto(f"{server.url}/services")
    await expect(page.locator('tr[data-service="svc"] td.calls')).not_to_have_text("0")
    await shot(page, "services")


async def test_a_large_workflow_is_drawn_without_overlaps(
    page: Page, api: AsyncClient, server: ServerProcess
) -> None:
    steps: dict[str, object] = {"start": {"http": {"service": "svc", "path": "/echo"}}}
    for lane in range(6):
        prev = "start"
        for i in range(9):
            name = f"lane{lane}_step{i}"
            deps = [prev] + ([f"lane{lane - 1}_step{i - 1}"] if lane and i and i % 3 == 0 else [])
            steps[name] = {"depends_on": deps, "http": {"service": "svc", "path": "/echo"}}
            prev = name
    steps["join"] = {
        "depends_on": [f"lane{lane}_step8" for lane in range(6)],
        "http": {"service": "svc", "path": "/echo"},
    }
    await api.apply({"name": "b-large", "steps": steps})
    await page.goto(f"{server.url}/workflows/b-large")
    await expect(page.locator("svg.graph g.node")).to_have_count(56)
    boxes = await page.eval_on_selector_all(
        "svg.graph g.node rect",
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return [r.left, r.top, r.right, r.bottom]; })",
    )
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            assert apart, (a, b)
    await shot(page, "workflow-large")
    full = await page.eval_on_selector("svg.graph", "e => e.getBoundingClientRect().width")
    await page.click(".fit-toggle")
    fitted = await page.eval_on_selector("svg.graph", "e => e.getBoundingClientRect().width")
    frame = await page.eval_on_selector(".graph-wrap", "e => e.clientWidth")
    assert fitted <= frame < full
    await shot(page, "workflow-large-fit")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("b-guarded"), env={"LEGATO_API_TOKEN": "open-sesame"}, name="g"
    )
    yield proc
    proc.stop()


async def test_with_a_token_the_ui_signs_in_first(page: Page, guarded: ServerProcess) -> None:
    await page.goto(f"{guarded.url}/runs")
    await expect(page.locator("h1")).to_have_text("Sign in")
    assert "/runs" not in await page.locator("main").inner_text()
    await shot(page, "login")
    await page.fill("#token", "wrong")
    await page.click("form button[type=submit]")
    await expect(page.locator("[role=alert]")).to_contain_text("not this server")
    await page.fill("#token", "open-sesame")
    await page.click("form button[type=submit]")
    await page.wait_for_url(f"{guarded.url}/runs")
    await expect(page.locator("h1")).to_have_text("Runs")
    cookies = await page.context.cookies()
    port = guarded.url.rsplit(":", 1)[1]
    (session,) = [c for c in cookies if c["name"] == f"legato_session_{port}"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    await page.click("text=Sign out")
    await expect(page.locator("h1")).to_have_text("Sign in")
