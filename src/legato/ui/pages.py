"""The UI's pages: each reads what it shows from the engine and the store, then renders a template.

Pages are plain server-rendered HTML (fast to first paint, nothing to build); the one script,
`static/ui.js`, adds live colours, the step panel, the timeline and the actions, through the same
REST API any client uses.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from legato.engine.runtime import Engine
from legato.engine.state import ACTIVE_RUN, STATUSES
from legato.errors import LegatoError
from legato.masking import mask_definition, mask_service, mask_text
from legato.model.build import WORKFLOW_NAME
from legato.model.workflow import Workflow
from legato.server import payloads, step_logs
from legato.server.access import Throttle, Tokens
from legato.server.errors import ApiError
from legato.server.guard import IDENTITY, QUIET, client_address
from legato.ui import auth
from legato.ui.live import Live
from legato.ui.stats import WINDOW, CallStats
from legato.ui.view import (
    GraphView,
    clip,
    clip_middle,
    graph_view,
    log_groups,
    script_json,
    took,
)

STATIC_DIR = Path(__file__).parent / "static"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
PAGE_SIZE = 50
MAX_GRAPHS = 256
FAILED_LOGIN_DELAY = 0.5  # slows guessing; a person mistyping hardly notices
# Pages load only this server's script and stylesheet, and no other site may frame them (so no
# page of another site can trick a click on Cancel or Retry).
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class UI:
    """The UI's state for one app: the engine, the live streams, call counts and laid-out graphs."""

    def __init__(
        self,
        engine: Engine,
        tokens: Tokens | None,
        throttle: Throttle | None = None,
        session_ttl: float = auth.DEFAULT_SESSION_TTL,
    ) -> None:
        self.engine = engine
        self.tokens = tokens
        self.throttle = throttle or Throttle()
        self.session_ttl = session_ttl
        self.live = Live(engine)
        self.stats = CallStats(engine)
        self.env = Environment(
            loader=PackageLoader("legato.ui", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals.update(
            clip=clip, clip_middle=clip_middle, took=took, active=ACTIVE_RUN, signed_in=bool(tokens)
        )
        self.env.filters["masked"] = mask_text  # error messages name the URL they called
        self.env.filters["masked_definition"] = mask_definition
        self.env.filters["iso"] = payloads.iso
        self.env.filters["pretty"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2).decode()
        # A workflow version never changes, so its drawing is computed once.
        self._graphs: dict[tuple[str, int], GraphView] = {}

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status, headers=PAGE_HEADERS)

    def error(self, status: int, message: str) -> HTMLResponse:
        return self.render("error.html", status, title=f"{status}", message=message, nav="")

    async def graph(self, name: str, version: int, wf: Workflow) -> GraphView:
        """Laid out once per version, in a thread: a dense graph can take seconds, and the loop
        serves everything else meanwhile."""
        key = (name, version)
        found = self._graphs.get(key)
        if found is None:
            drawn = await asyncio.to_thread(graph_view, wf)
            if len(self._graphs) >= MAX_GRAPHS:
                self._graphs.clear()
            found = self._graphs[key] = drawn
        return found


def _ui(request: Request) -> UI:
    ui: UI = request.app.state.ui
    return ui


async def home(request: Request) -> Response:
    return RedirectResponse("/workflows", 303)


async def workflows(request: Request) -> Response:
    ui = _ui(request)
    records = await ui.engine.store.list_workflows()
    return ui.render("workflows.html", title="Workflows", records=records, nav="workflows")


def _positive(text: str | None) -> int | None:
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 2**31:
        raise ValueError(text)
    return int(text)


async def workflow(request: Request) -> Response:
    ui = _ui(request)
    name = request.path_params["name"]
    try:
        version = _positive(request.query_params.get("version"))
    except ValueError:
        return ui.error(400, "version must be a positive integer")
    try:
        wf, found = await ui.engine.workflow_version(name, version)
    except LegatoError as exc:
        return ui.error(404, str(exc))
    versions = await ui.engine.store.list_workflow_versions(name)
    runs = await ui.engine.store.list_runs(name, None, 10)
    skeleton = {f.name: None for f in wf.inputs}
    return ui.render(
        "workflow.html",
        title=name,
        nav="workflows",
        wf=wf,
        version=found,
        versions=versions,
        latest=versions[-1].version if versions else found,
        graph=await ui.graph(name, found, wf),
        runs=runs,
        skeleton=orjson.dumps(skeleton, option=orjson.OPT_INDENT_2).decode(),
    )


async def runs(request: Request) -> Response:
    ui = _ui(request)
    query = request.query_params
    workflow_name = query.get("workflow") or None
    status = query.get("status") or None
    before = query.get("before") or None
    if status is not None and status not in STATUSES:
        return ui.error(400, f"status must be one of {', '.join(STATUSES)}")
    if before is not None and not RUN_ID.fullmatch(before):
        return ui.error(400, "before must be the id of a run")
    if workflow_name is not None and not WORKFLOW_NAME.fullmatch(workflow_name):
        return ui.error(400, "workflow must be the name of a workflow")
    found = await ui.engine.store.list_runs(workflow_name, status, PAGE_SIZE + 1, before)
    page = found[:PAGE_SIZE]
    names = sorted({r.name for r in await ui.engine.store.list_workflows()})
    return ui.render(
        "runs.html",
        title="Runs",
        nav="runs",
        runs=page,
        older=page[-1].id if len(found) > PAGE_SIZE else None,
        first_page=before is None,
        workflow=workflow_name,
        status_filter=status,
        workflows=names,
        statuses=STATUSES,
    )


async def run(request: Request) -> Response:
    ui = _ui(request)
    run_id = request.path_params["run_id"]
    if not RUN_ID.fullmatch(run_id):
        return ui.error(404, "run ids are 32 hex digits")
    state = await ui.engine.store.get_run(run_id)
    if state is None:
        return ui.error(404, f"no run with id {run_id!r}")
    info = state.info
    try:
        wf: Workflow | None = (await ui.engine.workflow_version(info.workflow, info.version))[0]
    except LegatoError:
        wf = None
    attempts = await ui.engine.store.get_attempts(run_id)
    detail = payloads.run_detail(state, wf, attempts)
    logs = await ui.engine.store.get_logs(run_id, limit=step_logs.PAGE)
    return ui.render(
        "run.html",
        logs=log_groups(logs),
        logs_cut=len(logs) == step_logs.PAGE,
        title=f"Run {run_id[:8]}",
        nav="runs",
        run=detail,
        graph=await ui.graph(info.workflow, info.version, wf) if wf is not None else None,
        statuses={name: s.status for name, s in state.steps.items()},
        data=script_json(detail),
    )


async def run_events(request: Request) -> Response:
    ui = _ui(request)
    run_id = request.path_params["run_id"]
    if not RUN_ID.fullmatch(run_id) or await ui.engine.store.run_status(run_id) is None:
        raise ApiError(404, f"no run with id {run_id!r}", "run_id")
    return StreamingResponse(
        ui.live.stream(run_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def services(request: Request) -> Response:
    ui = _ui(request)
    counts = await ui.stats.by_service()
    return ui.render(
        "services.html",
        title="Services",
        nav="services",
        services=[mask_service(s) for s in ui.engine.services()],
        counts=counts,
        minutes=int(WINDOW // 60),
    )


async def login(request: Request) -> Response:
    ui = _ui(request)
    if not ui.tokens:
        return RedirectResponse("/", 303)
    if request.method == "GET":
        target = auth.safe_next(request.query_params.get("next"))
        return ui.render("login.html", title="Sign in", next=target, failed=False)
    client = client_address(request.scope)
    wait = ui.throttle.wait(client)
    if wait:
        page = ui.error(429, f"Too many wrong tokens: try again in {wait} s.")
        page.headers["Retry-After"] = str(wait)
        return page
    given, target = await auth.login_form(request)
    token = ui.tokens.find(given)
    if token is None:
        ui.throttle.fail(client)
        await asyncio.sleep(FAILED_LOGIN_DELAY)
        return ui.render(
            "login.html", 401, title="Sign in", next=auth.safe_next(target), failed=True
        )
    try:
        session_id = await auth.open_session(ui.engine.store, token, ui.session_ttl)
    except Exception as exc:  # the database is down: say so, not 500
        QUIET.warn("sessions", f"cannot store a session: {exc}")
        return _unavailable(ui)
    request.scope[IDENTITY] = token.name
    response = RedirectResponse(auth.safe_next(target), 303)
    secure = request.url.scheme == "https"
    auth.set_session(response, request.scope, session_id, secure, ui.session_ttl)
    return response


def _unavailable(ui: UI) -> Response:
    page = ui.error(503, "The database cannot be reached; try again in a moment.")
    page.headers["Retry-After"] = "5"
    return page


async def logout(request: Request) -> Response:
    """Ends the session in the store, so a copy of the cookie is worthless too."""
    ui = _ui(request)
    session_id = request.cookies.get(auth.cookie_name(request.scope))
    if ui.tokens and session_id and len(session_id) <= 256:
        try:
            token = await auth.session_token(ui.engine.store, ui.tokens, session_id)
            if token is not None:
                request.scope[IDENTITY] = token.name
            await ui.engine.store.drop_session(auth.session_key(session_id))
        except Exception as exc:  # kept: better to say so than to pretend it ended
            QUIET.warn("sessions", f"cannot end a session: {exc}")
            return _unavailable(ui)
    response = RedirectResponse("/login", 303)
    auth.clear_session(response, request.scope)
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/", home),
        Route("/workflows", workflows),
        Route("/workflows/{name}", workflow),
        Route("/runs", runs),
        Route("/runs/{run_id}", run),
        Route("/runs/{run_id}/events", run_events),
        Route("/services", services),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static/ui", StaticFiles(directory=STATIC_DIR), name="ui-static"),
    ]
