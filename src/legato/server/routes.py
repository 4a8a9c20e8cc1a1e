"""The REST API's handlers: each reads and checks its request, asks the engine, and shapes the answer.

Nothing here decides anything about runs; the engine does. A handler either answers or raises an
error that `errors.error_response` turns into a 4xx JSON body.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from legato.engine.decider import CALLBACK
from legato.engine.runtime import Engine
from legato.engine.starts import KeyReused, Once
from legato.engine.state import ACTIVE_RUN, STATUSES, WAITING, RunState
from legato.errors import Conflict, DefinitionError, InputError, NotFound, Problem
from legato.masking import mask_service, mask_text
from legato.model.build import TAG, WORKFLOW_NAME
from legato.model.durations import parse_duration
from legato.model.graph import workflow_graph
from legato.model.service import Service
from legato.server import bodies, once, payloads, step_logs
from legato.server.errors import ApiError, json_response
from legato.server.metrics import CONTENT_TYPE, Metrics
from legato.store.step_logs import MAX_CHUNKS

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_WAIT = 3600.0
MAX_VERSION = 2**31
# `POST /e/{workflow}?wait=S`: an event's sender waits a short while, and only so many at once (each
# holds a connection and, on a shared store, looks at it every few seconds); past that, 202 at once.
MAX_EVENT_WAIT = 60.0
MAX_EVENT_WAITERS = 256


@dataclass
class Context:
    engine: Engine
    metrics: Metrics
    max_body: int
    event_waiters: int = 0


def _ctx(request: Request) -> Context:
    ctx: Context = request.app.state.legato
    return ctx


def _run_id(request: Request) -> str:
    run_id: str = request.path_params["run_id"]
    if not RUN_ID.fullmatch(run_id):
        raise ApiError(404, f"no run with id {run_id!r} (run ids are 32 hex digits)", "run_id")
    return run_id


# -- health and metrics ---------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    engine = _ctx(request).engine
    if engine.draining:
        return json_response({"status": "draining"}, 503)
    return json_response({"status": "ok", "active_runs": engine.active_runs()})


async def metrics(request: Request) -> Response:
    return Response(_ctx(request).metrics.render(), media_type=CONTENT_TYPE)


# -- services --------------------------------------------------------------------------------


def service_payload(service: Service) -> dict[str, Any]:
    """A service as stored, with its credentials hidden (URL password and key-like query values,
    the token, headers off the allow-list: see legato.masking)."""
    return mask_service(service).to_dict()


async def list_services(request: Request) -> Response:
    services = _ctx(request).engine.services()
    return json_response({"services": [service_payload(s) for s in services]})


async def create_service(request: Request) -> Response:
    ctx = _ctx(request)
    body = await bodies.json_object(request, ctx.max_body)
    service = Service.from_dict(body)
    if ctx.engine.service(service.name) is not None:
        raise ApiError(
            409,
            f"service {service.name!r} exists; PUT /api/services/{service.name} replaces it",
            "name",
        )
    await ctx.engine.put_service(service)
    return json_response(
        service_payload(service), 201, {"Location": f"/api/services/{service.name}"}
    )


async def get_service(request: Request) -> Response:
    name = request.path_params["name"]
    service = _ctx(request).engine.service(name)
    if service is None:
        raise ApiError(404, f"no service named {name!r}", "name")
    return json_response(service_payload(service))


async def put_service(request: Request) -> Response:
    ctx = _ctx(request)
    name = request.path_params["name"]
    body = await bodies.json_object(request, ctx.max_body)
    if body.setdefault("name", name) != name:
        raise ApiError(422, f"must match the name in the path ({name!r})", "name")
    service = Service.from_dict(body)
    existed = ctx.engine.service(name) is not None
    await ctx.engine.put_service(service)
    return json_response(service_payload(service), 200 if existed else 201)


async def delete_service(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        await _ctx(request).engine.delete_service(name)
    except NotFound as exc:
        raise ApiError(404, str(exc), "name") from None
    return Response(status_code=204)


# -- workflows -------------------------------------------------------------------------------


async def apply_workflow(request: Request) -> Response:
    ctx = _ctx(request)
    document = await bodies.document(request, ctx.max_body)
    record = await ctx.engine.apply(document)
    body = payloads.workflow_summary(record)
    body["created"] = record.created
    if record.warnings:
        body["warnings"] = list(record.warnings)
    headers = {"Location": f"/api/workflows/{record.name}/versions/{record.version}"}
    return json_response(body, 201 if record.created else 200, headers)


async def list_workflows(request: Request) -> Response:
    records = await _ctx(request).engine.store.list_workflows()
    return json_response({"workflows": [payloads.workflow_summary(r) for r in records]})


async def get_workflow(request: Request) -> Response:
    name = request.path_params["name"]
    versions = await _ctx(request).engine.store.list_workflow_versions(name)
    if not versions:
        raise ApiError(404, f"no workflow named {name!r}", "name")
    return json_response(payloads.workflow_detail(versions[-1], versions))


def _version(text: str | None, where: str) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < MAX_VERSION:
        raise ApiError(400, f"must be a positive integer, not {text!r}", where)
    return int(text)


async def get_workflow_version(request: Request) -> Response:
    name = request.path_params["name"]
    version = _version(request.path_params["version"], "version")
    record = await _ctx(request).engine.store.get_workflow(name, version)
    if record is None:
        raise ApiError(404, f"workflow {name!r} has no version {version}", "version")
    return json_response(payloads.workflow_detail(record, []))


async def workflow_graph_route(request: Request) -> Response:
    name = request.path_params["name"]
    version = _version(request.query_params.get("version"), "version")
    try:
        wf, found = await _ctx(request).engine.workflow_version(name, version)
    except NotFound as exc:
        raise ApiError(404, str(exc), "name" if version is None else "version") from None
    graph = await asyncio.to_thread(workflow_graph, wf)
    graph["version"] = found
    return json_response(graph)


# -- callbacks -------------------------------------------------------------------------------


async def callback(request: Request) -> Response:
    """A service reports on an async call. The signed token is the credential: services need no
    API token to call back, and a token completes only the one attempt it names."""
    ctx = _ctx(request)
    body = await bodies.json_object(request, ctx.max_body)
    lines = step_logs.callback_lines(body.pop("logs"), time.time()) if "logs" in body else []
    error = _callback_body(body, ("output", "error", "heartbeat"))
    if "heartbeat" in body and body["heartbeat"] is not True:
        raise ApiError(422, "must be true", "heartbeat")
    _refuse_while_draining(ctx.engine)
    token = request.path_params["token"]
    await ctx.engine.complete(
        token, output=body.get("output"), error=error, heartbeat="heartbeat" in body
    )
    answer = {"status": "extended" if "heartbeat" in body else "accepted"}
    if not await step_logs.attach(ctx.engine, token, lines):
        answer["logs"] = f"not kept: at most {MAX_CHUNKS} callbacks' lines are kept per attempt"
    return json_response(answer)


def _callback_body(body: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any] | None:
    """Exactly one of `allowed` is given; an error may be a bare message. Returns the error."""
    bodies.only_fields(body, allowed)
    given = [k for k in allowed if k in body]
    if len(given) != 1:
        raise ApiError(422, f"send exactly one of {', '.join(allowed)}", "body")
    error = body.get("error")
    if isinstance(error, str):
        error = {"message": error}
    if "error" in body and not isinstance(error, dict):
        raise ApiError(422, "must be an object (or a message)", "error")
    return error


async def complete_step(request: Request) -> Response:
    """Complete a step that waits for its callback, by hand (a person's approval, from the UI):
    the same as the service's callback for the step's current attempt, so the same 409s apply."""
    ctx = _ctx(request)
    run_id = _run_id(request)
    step = request.path_params["step"]
    body = await bodies.json_object(request, ctx.max_body)
    error = _callback_body(body, ("output", "error"))
    _refuse_while_draining(ctx.engine)
    state = ctx.engine.live_run(run_id) or await ctx.engine.store.get_run(run_id)
    if state is None:
        raise ApiError(404, f"no run with id {run_id!r}", "run_id")
    current = state.steps.get(step)
    if current is None:
        raise ApiError(404, f"run {run_id} has no started step named {step!r}", "step")
    if current.status != WAITING or current.reason != CALLBACK:
        waits = f"waiting for {current.reason}" if current.status == WAITING else current.status
        raise ApiError(409, f"step {step!r} is {waits}, not waiting for a callback", "step")
    if ctx.engine.tokens is None:  # only before the engine has started
        raise ApiError(503, "the engine is starting; try again shortly", "", "unavailable")
    token = ctx.engine.tokens.issue(run_id, step, current.attempt)
    await ctx.engine.complete(token, output=body.get("output"), error=error)
    return json_response(
        {"status": "accepted", "run_id": run_id, "step": step, "attempt": current.attempt}
    )


async def publish_event(request: Request) -> Response:
    """An event for the steps listening for its type and key (kept a while if none is yet)."""
    ctx = _ctx(request)
    body = await bodies.json_object(request, ctx.max_body)
    bodies.only_fields(body, ("type", "key", "data", "keep_for"))
    kind = body.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise ApiError(422, "is required: the event's type, a non-empty string", "type")
    if "\x00" in kind:
        raise ApiError(422, "must not contain a NUL character", "type")
    key = body.get("key")
    if key is not None and (isinstance(key, dict | list)):
        raise ApiError(422, "must be a string or a number", "key")
    if isinstance(key, str) and "\x00" in key:
        raise ApiError(422, "must not contain a NUL character", "key")
    keep_for = None
    if "keep_for" in body:
        try:
            keep_for = parse_duration(body["keep_for"])
        except ValueError as exc:
            raise ApiError(422, str(exc), "keep_for") from None
    _refuse_while_draining(ctx.engine)
    result = await ctx.engine.publish(kind, key, body.get("data"), keep_for=keep_for)
    return json_response(
        {
            "id": result.id,
            "delivered_to": result.delivered_to,
            "kept_until": payloads.iso(result.kept_until),
        },
        202,
    )


# -- runs ------------------------------------------------------------------------------------


def _refuse_while_draining(engine: Engine) -> None:
    if engine.draining:
        raise ApiError(503, "the server is shutting down; try again shortly", "", "draining")


async def _start(
    ctx: Context,
    workflow: str,
    data: dict[str, Any],
    version: int | None,
    started: Once | None = None,
) -> str:
    _refuse_while_draining(ctx.engine)
    try:
        run_id = None if started is None else started.run_id
        return await ctx.engine.start_run(
            workflow, data, version=version, run_id=run_id, once=started
        )
    except KeyReused as exc:
        raise ApiError(422, str(exc), once.HEADER) from None
    except Conflict as exc:  # the caller's run id is taken
        raise ApiError(409, str(exc), "id") from None
    except NotFound as exc:
        raise ApiError(404, str(exc), "workflow" if version is None else "version") from None
    except DefinitionError as exc:  # a stored version that no longer builds (e.g. a lost function)
        raise ApiError(409, str(exc), "workflow") from None


async def start_run(request: Request) -> Response:
    ctx = _ctx(request)
    wait = bodies.query_seconds(request, "wait", MAX_WAIT)
    body = await bodies.json_object(request, ctx.max_body, required=False)
    bodies.only_fields(body, ("input", "version", "id"))
    data = bodies.object_field(body, "input")
    started = once.once(request, "runs", body, body.get("id"))
    raw_version = body.get("version")
    if raw_version is not None and (
        not isinstance(raw_version, int)
        or isinstance(raw_version, bool)
        or not 0 < raw_version < MAX_VERSION
    ):
        raise ApiError(422, f"must be an integer from 1 to {MAX_VERSION - 1}", "version")
    run_id = await _start(ctx, request.path_params["name"], data, raw_version, started)
    headers = once.headers(run_id, started)
    if wait is not None:
        await ctx.engine.wait_ended(run_id, wait)
        detail = await _detail(ctx.engine, await ctx.engine.get_run(run_id))
        return json_response(detail, 202 if detail["status"] in ACTIVE_RUN else 200, headers)
    live = ctx.engine.live_run(run_id)
    if live is None and started is not None and started.replayed:
        live = await ctx.engine.get_run(run_id)
    created = live.info.created_at if live is not None else time.time()
    if live is None and started is not None and started.created_at is not None:
        created = started.created_at  # what a replay of this start reads back
    status = live.info.status if live is not None else "pending"
    return json_response(
        {"id": run_id, "status": status, "created_at": payloads.iso(created)}, 202, headers
    )


async def trigger_run(request: Request) -> Response:
    """A manual trigger: `conf` is the run's input (a scheduled workflow's run also gets its
    `input.schedule`)."""
    ctx = _ctx(request)
    body = await bodies.json_object(request, ctx.max_body, required=False)
    bodies.only_fields(body, ("conf",))
    conf = bodies.object_field(body, "conf")
    started = once.once(request, "trigger", body)
    _refuse_while_draining(ctx.engine)
    try:
        run_id = await ctx.engine.trigger(request.path_params["name"], conf, started)
    except KeyReused as exc:
        raise ApiError(422, str(exc), once.HEADER) from None
    except NotFound as exc:
        raise ApiError(404, str(exc), "name") from None
    except DefinitionError as exc:
        raise ApiError(409, str(exc), "name") from None
    return json_response(
        {"id": run_id, "status": "pending", "created_at": payloads.iso(time.time())},
        202,
        once.headers(run_id, started),
    )


async def run_logs(request: Request) -> Response:
    """What a run's steps logged, per attempt (see server/step_logs.py)."""
    return await step_logs.run_logs(request, _ctx(request).engine, _run_id(request))


async def run_notifications(request: Request) -> Response:
    """What became of each notification about a run (failures included)."""
    engine = _ctx(request).engine
    run_id = _run_id(request)
    if await engine.store.run_status(run_id) is None:
        raise ApiError(404, f"no run with id {run_id!r}", "run_id")
    rows = await engine.store.list_notifications(run_id)
    return json_response(
        {
            "notifications": [
                {
                    "event": r.event,
                    "channel": r.channel,
                    "target": mask_text(r.target),
                    "ok": r.ok,
                    "tries": r.tries,
                    "error": mask_text(r.error) if r.error else r.error,
                    "created_at": payloads.iso(r.created_at),
                    "delivery_id": r.delivery_id,
                }
                for r in rows
            ]
        }
    )


# -- schedules -------------------------------------------------------------------------------


def schedule_payload(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        **entry,
        "next_start": payloads.iso(entry["next_start"]),
        "next_fire": payloads.iso(entry["next_fire"]),
    }


async def list_schedules(request: Request) -> Response:
    found = await _ctx(request).engine.list_schedules()
    return json_response({"schedules": [schedule_payload(e) for e in found]})


async def _pause(request: Request, paused: bool) -> Response:
    engine, name = _ctx(request).engine, request.path_params["name"]
    try:
        await engine.pause_schedule(name, paused)
    except NotFound as exc:
        raise ApiError(404, str(exc), "name") from None
    entry = next((e for e in await engine.list_schedules() if e["workflow"] == name), None)
    if entry is None:  # its workflow's latest version no longer has a schedule
        raise ApiError(404, f"workflow {name!r} has no schedule", "name")
    return json_response(schedule_payload(entry))


async def pause_schedule(request: Request) -> Response:
    return await _pause(request, True)


async def unpause_schedule(request: Request) -> Response:
    return await _pause(request, False)


async def event(request: Request) -> Response:
    """machinery's event: starts a run. With `?wait=S`, answers the ended run (with its output) if
    it ends within S seconds, wherever it runs (the engine hears ends from other processes)."""
    ctx = _ctx(request)
    wait = bodies.query_seconds(request, "wait", MAX_EVENT_WAIT)
    body = await bodies.json_object(request, ctx.max_body)
    bodies.only_fields(body, ("data",))
    data = bodies.object_field(body, "data")
    started = once.once(request, "event", body)
    try:
        run_id = await _start(ctx, request.path_params["workflow"], data, None, started)
    except InputError as exc:  # named as the event's sender wrote it: `data.message`
        raise InputError([Problem(_as_data(p.path), p.message) for p in exc.problems]) from None
    accepted = {"event_id": run_id, "ack_date": payloads.iso(time.time()), "status": "accepted"}
    headers = once.headers(run_id, started)
    if wait is not None and ctx.event_waiters >= MAX_EVENT_WAITERS:  # said, not silently dropped
        accepted["wait"] = (
            f"not waited: {MAX_EVENT_WAITERS} events are waiting already (the most at once); "
            f"follow the run at GET /api/runs/{run_id}"
        )
    elif wait is not None:
        ctx.event_waiters += 1
        try:
            ended = await ctx.engine.wait_ended(run_id, wait)
        finally:
            ctx.event_waiters -= 1
        if ended:
            detail = await _detail(ctx.engine, await ctx.engine.get_run(run_id))
            if detail["status"] not in ACTIVE_RUN:
                return json_response({**accepted, **detail}, 200, headers)
    return json_response(accepted, 202, headers)


def _as_data(path: str) -> str:
    return "data" + path.removeprefix("input") if path.split(".")[0] == "input" else path


async def _detail(engine: Engine, state: RunState) -> dict[str, Any]:
    try:
        wf = (await engine.workflow_version(state.info.workflow, state.info.version))[0]
    except (NotFound, DefinitionError):
        wf = None
    attempts = await engine.store.get_attempts(state.info.id)
    return payloads.run_detail(state, wf, attempts)


async def list_runs(request: Request) -> Response:
    engine = _ctx(request).engine
    status = bodies.query_choice(request, "status", STATUSES)
    limit = bodies.query_int(request, "limit", 50, 1, 500)
    cursor = request.query_params.get("cursor")
    if cursor is not None and not RUN_ID.fullmatch(cursor):
        raise ApiError(400, "must be the next_cursor of a previous page", "cursor")
    workflow = request.query_params.get("workflow")
    if workflow is not None and not WORKFLOW_NAME.fullmatch(workflow):
        raise ApiError(400, "is not a workflow name", "workflow")
    tag = request.query_params.get("tag")
    workflows = None
    if tag is not None:
        if not TAG.fullmatch(tag):
            raise ApiError(400, "is not a tag (1-64 letters, digits, '_', '.', ':' or '-')", "tag")
        workflows = (await engine.tags()).get(tag, [])
    infos = await engine.store.list_runs(workflow, status, limit + 1, cursor, workflows)
    page = infos[:limit]
    next_cursor = page[-1].id if len(infos) > limit else None
    return json_response(
        {"runs": [payloads.run_summary(i) for i in page], "next_cursor": next_cursor}
    )


async def list_triggers(request: Request) -> Response:
    triggers = _ctx(request).engine.triggers
    return json_response(
        {
            "subscribed": triggers.listing(),
            "messages": dict(triggers.stats),
            "rejected": [{**r, "at": payloads.iso(r["at"])} for r in reversed(triggers.rejected)],
        }
    )


async def list_tags(request: Request) -> Response:
    tags = await _ctx(request).engine.tags()
    return json_response({"tags": [{"tag": t, "workflows": w} for t, w in tags.items()]})


async def get_run(request: Request) -> Response:
    engine = _ctx(request).engine
    run_id = _run_id(request)
    try:
        state = await engine.get_run(run_id)
    except NotFound as exc:
        raise ApiError(404, str(exc), "run_id") from None
    wait = bodies.query_seconds(request, "wait", MAX_WAIT)
    if wait is not None and not state.info.done:
        await engine.wait_ended(run_id, wait)
        state = await engine.get_run(run_id)  # ended or not, as it is now
    return json_response(await _detail(engine, state))


async def _control(request: Request, action: str, status: int) -> Response:
    """Cancel or retry: the engine says whether the run's state allows it (409 if not)."""
    engine = _ctx(request).engine
    run_id = _run_id(request)
    if action == "retry":
        _refuse_while_draining(engine)
    try:
        await (engine.cancel if action == "cancel" else engine.retry)(run_id)
    except NotFound as exc:
        raise ApiError(404, str(exc), "run_id") from None
    return json_response(payloads.run_summary((await engine.get_run(run_id)).info), status)


async def cancel_run(request: Request) -> Response:
    return await _control(request, "cancel", 200)


async def retry_run(request: Request) -> Response:
    return await _control(request, "retry", 202)
