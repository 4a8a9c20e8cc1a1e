"""The ASGI application: routes, the bearer-token gate, error handling, and the engine's lifespan.

The engine runs in the server's own event loop: a run started by a request is decided, committed and
executed by the same process, with no queue in between.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from legato.engine.runtime import Engine
from legato.errors import LegatoError
from legato.server import audit, bulk, docs, readiness, routes, secret_routes
from legato.server.access import Throttle, Tokens, load_tokens
from legato.server.errors import ApiError, client_gone, handle
from legato.server.guard import Guard
from legato.server.metrics import Metrics
from legato.store.faults import REQUEST_LIMIT, STORE_TIMEOUT, fault_types
from legato.ui import pages
from legato.ui.auth import DEFAULT_SESSION_TTL

DEFAULT_MAX_BODY = 1024 * 1024
Endpoint = Callable[[Request], Awaitable[Response]]
# The health check, the static docs page, callbacks (their signed task token is the credential),
# and the UI's login and logout forms and its static assets (which hold no data).
OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/api/callbacks/", "/login", "/logout", "/static/ui/")


class StoreLimit:
    """A request waits on the store (a call, or the commit of what it decided) no longer than
    `limit` seconds: past it, or with the store down, it is answered 503 (see store/faults.py)."""

    def __init__(self, app: ASGIApp, limit: float = STORE_TIMEOUT) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = REQUEST_LIMIT.set(self.limit)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_LIMIT.reset(token)


def _route(path: str, **handlers: Endpoint) -> Route:
    """One route per path with a handler per method, so a 405 lists every method the path allows."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, dispatch, methods=list(handlers))


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    tokens: Tokens | None = None,
    session_ttl: float = DEFAULT_SESSION_TTL,
    max_body: int = DEFAULT_MAX_BODY,
    grace: float = 10.0,
    own_engine: bool = True,
    api: bool = True,
) -> ASGIApp:
    """The API for `engine`. With `own_engine` (for any ASGI server) the app's lifespan starts the
    engine and closes it with the grace period; `legato serve` runs the engine around the server.
    Without `api` (a `legato worker`), only the health check and the metrics. `token` is an admin
    token named `default`; `tokens` adds named tokens with roles (see legato.server.access)."""
    tokens = Tokens([*load_tokens(token, None).tokens, *(tokens.tokens if tokens else [])])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not own_engine:
            yield
            return
        await engine.start()
        try:
            yield
        finally:
            await engine.close(grace)

    probes = [
        Route("/healthz", routes.healthz),
        Route("/readyz", readiness.readyz),
        Route("/metrics", routes.metrics),
    ]
    app = Starlette(
        routes=probes
        if not api
        else [
            *probes,
            Route("/openapi.json", docs.openapi),
            Route("/docs", docs.page),
            Mount("/docs/static", StaticFiles(directory=docs.SWAGGER_DIR), name="docs-static"),
            _route("/api/services", GET=routes.list_services, POST=routes.create_service),
            _route(
                "/api/services/{name}",
                GET=routes.get_service,
                PUT=routes.put_service,
                DELETE=routes.delete_service,
            ),
            _route("/api/secrets", GET=secret_routes.list_secrets),
            _route(
                "/api/secrets/{name}",
                PUT=secret_routes.put_secret,
                DELETE=secret_routes.delete_secret,
            ),
            _route("/api/workflows", GET=routes.list_workflows, POST=routes.apply_workflow),
            Route("/api/workflows/{name}", routes.get_workflow),
            Route("/api/workflows/{name}/versions/{version}", routes.get_workflow_version),
            Route("/api/workflows/{name}/graph", routes.workflow_graph_route),
            Route("/api/workflows/{name}/runs", routes.start_run, methods=["POST"]),
            Route("/api/workflows/{name}/trigger", routes.trigger_run, methods=["POST"]),
            Route("/api/schedules", routes.list_schedules),
            Route("/api/triggers", routes.list_triggers),
            Route("/api/tags", routes.list_tags),
            Route("/api/schedules/{name}/pause", routes.pause_schedule, methods=["POST"]),
            Route("/api/schedules/{name}/unpause", routes.unpause_schedule, methods=["POST"]),
            Route("/api/runs", routes.list_runs),
            Route("/api/runs:cancel", bulk.cancel_runs, methods=["POST"]),
            Route("/api/runs:retry", bulk.retry_runs, methods=["POST"]),
            Route("/api/runs/{run_id}", routes.get_run),
            Route("/api/runs/{run_id}/notifications", routes.run_notifications),
            Route("/api/runs/{run_id}/logs", routes.run_logs),
            Route("/api/runs/{run_id}/cancel", routes.cancel_run, methods=["POST"]),
            Route("/api/runs/{run_id}/retry", routes.retry_run, methods=["POST"]),
            Route(
                "/api/runs/{run_id}/steps/{step}/complete", routes.complete_step, methods=["POST"]
            ),
            Route("/e/{workflow}", routes.event, methods=["POST"]),
            Route("/api/callbacks/{token}", routes.callback, methods=["POST"]),
            Route("/api/events", routes.publish_event, methods=["POST"]),
            Route("/api/audit", audit.list_audit),
            *pages.routes(),
        ],
        exception_handlers={
            ApiError: handle,
            LegatoError: handle,
            HTTPException: handle,
            ClientDisconnect: client_gone,
            # Store faults answer 503 here, not in the catch-all (which re-raises, for a traceback).
            **dict.fromkeys(fault_types(), handle),
            Exception: handle,
        },
        lifespan=lifespan,
    )
    app.state.legato = routes.Context(engine, Metrics(engine), max_body)
    throttle = Throttle()
    if api:
        app.state.ui = pages.UI(engine, tokens or None, throttle, session_ttl)
    if not api and not tokens:
        return StoreLimit(app)
    return StoreLimit(Guard(app, engine.store, tokens, OPEN_PATHS, throttle))
