"""`legato serve`: one process, one event loop, holding the API and the engine.

On SIGTERM (or Ctrl-C) the server drains: the engine starts no new step, requests waiting on runs
answer with what they have, open connections close, and steps under way get the grace period to finish
and commit; whatever is still running after it is left for the next start to resume.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
import sys
from types import FrameType

import uvicorn

from legato.dags import DagFolder, engine_started
from legato.engine.egress import EgressPolicy
from legato.engine.lineage import DEFAULT_MAX_DEPTH, DEFAULT_MAX_DESCENDANTS, RunLimits
from legato.engine.results import S3Results
from legato.engine.runtime import DEFAULT_LEASE, Engine
from legato.engine.starts import DEFAULT_TTL
from legato.errors import LegatoError
from legato.masking import mask_url
from legato.model.limits import DefinitionLimits
from legato.sandbox import LIMITS
from legato.server import connections, retention
from legato.server.access import load_tokens, trusted_proxies
from legato.server.app import DEFAULT_MAX_BODY, create_app
from legato.server.connections import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT
from legato.ui.auth import DEFAULT_SESSION_TTL

log = logging.getLogger("legato.server")
SWITCH_INTERVAL = 0.001


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DrainingServer(uvicorn.Server):
    """uvicorn's server around the engine: it opens the engine before it listens, tells it to drain the
    moment a stop signal arrives, and closes it (with the grace period) after the last connection."""

    def __init__(
        self,
        config: uvicorn.Config,
        engine: Engine,
        grace: float,
        public_url: str | None = None,
        api: bool = True,
    ) -> None:
        super().__init__(config)
        self.engine = engine
        self.grace = grace
        self.public_url = public_url
        self.api = api  # False: a worker's probes only, so callbacks cannot come here
        self._loop: asyncio.AbstractEventLoop | None = None
        self._engine_closed = False
        self.audit_retention = retention.DEFAULT_AUDIT_RETENTION
        self._pruner: asyncio.Task[None] | None = None
        self.dags: DagFolder | None = None  # registered once the store is open (API roles)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Run until stopped; a failure to start is a LegatoError saying why, not a SystemExit."""
        self._loop = asyncio.get_running_loop()
        self.engine.callback_base = self.public_url or (self._own_url() if self.api else None)
        try:
            await self.engine.start()
        except LegatoError:
            raise
        except Exception as exc:
            raise LegatoError(f"cannot open the database {self.engine.store.url}: {exc}") from None
        if self.dags is not None:
            try:
                if self.api:
                    await register_dags(self.engine, self.dags)
                if self.engine.worker:  # what the DAG files' modules do on a running engine
                    await engine_started(self.engine, self.dags)
            except LegatoError:
                await self._close_engine()
                raise
        if self.api:
            pruning = retention.prune_forever(self.engine.store, self.audit_retention)
            self._pruner = asyncio.create_task(pruning, name="legato-audit-retention")
        try:
            await super().serve(sockets)
        except SystemExit:
            raise LegatoError(
                f"the server could not start on {self.config.host}:{self.config.port} "
                "(the error above says why)"
            ) from None
        finally:
            await self._close_engine()

    def _own_url(self) -> str | None:
        """Where services reach this server: its host (this machine's name for a wildcard bind)."""
        if not self.config.port:
            return None  # known once bound (see startup)
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.config.port}"

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.engine.callback_base is None and self.servers and self.api:
            self.engine.callback_base = self.address

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Here, not after serve(): once serve() returns, uvicorn re-raises the stop signal.
        await super().shutdown(sockets)
        await self._close_engine()

    async def _close_engine(self) -> None:
        if not self._engine_closed:
            self._engine_closed = True
            if self._pruner is not None:
                self._pruner.cancel()
                await asyncio.gather(self._pruner, return_exceptions=True)
            await self.engine.close(self.grace)
            left = self.engine.active_runs()
            if left and self.started:
                print(
                    f"Legato stopped; {left} unfinished run(s) resume on the next start",
                    file=sys.stderr,
                )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler runs between any two bytecodes; the engine is only touched from its loop.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.engine.drain)
        super().handle_exit(sig, frame)

    @property
    def address(self) -> str:
        """The base URL the server listens on (its real port when asked for port 0)."""
        sock = self.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        if sock.family == socket.AF_INET6:
            host = f"[{host}]"
        return f"http://{host}:{port}"


def build_server(
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    token_file: str | None = None,
    session_ttl: float = DEFAULT_SESSION_TTL,
    grace: float = 10.0,
    max_body: int = DEFAULT_MAX_BODY,
    allow_open: bool = False,
    log_level: str = "warning",
    python_modules: tuple[str, ...] = (),
    public_url: str | None = None,
    event_retention: float | None = None,
    transports: tuple[tuple[str, str], ...] = (),
    subscriptions: tuple[tuple[str, str], ...] = (),
    s3_endpoint: str | None = None,
    migrate: bool = False,
    role: str = "all",
    lease: float = DEFAULT_LEASE,
    egress: EgressPolicy | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_descendants: int = DEFAULT_MAX_DESCENDANTS,
    idempotency_ttl: float = DEFAULT_TTL,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    limits: DefinitionLimits | None = None,
    max_rendered: int | None = None,
    forwarded_allow_ips: str | None = None,
    audit_retention: float = retention.DEFAULT_AUDIT_RETENTION,
    dags: DagFolder | None = None,
    directory_url: str | None = None,
) -> DrainingServer:
    """Refuses an unauthenticated server on a non-loopback address unless `allow_open`, and a
    token shorter than 16 characters there (a guess away).

    `role`: "all" (the API and the engine), "api" (the API only: workers sharing the database run
    the steps) or "worker" (the engine, with only its health check and metrics served).

    `forwarded_allow_ips`: the proxies whose X-Forwarded-For/-Proto are believed (uvicorn trusts
    127.0.0.1's by default, which let any local process pick the address it is throttled as).

    `dags`: a DAG folder already imported (legato.dags): every role may call its functions; the
    API roles register its workflows before listening. `directory_url`: a CoWorks-style directory
    service asked for services Legato's own directory lacks (engine/directory.py)."""
    if not session_ttl > 0:
        raise LegatoError("--session-ttl must be longer than 0s")
    if not audit_retention > 0:
        raise LegatoError("--audit-retention must be longer than 0s")
    tokens = load_tokens(token, token_file)
    if not tokens and not is_loopback(host) and not allow_open:
        raise LegatoError(
            f"refusing to serve {host} without a token: set LEGATO_API_TOKEN, bind to "
            "127.0.0.1, or pass --allow-unauthenticated"
        )
    if not is_loopback(host):
        tokens.check_public(host)
    proxies = trusted_proxies(forwarded_allow_ips)
    # Definitions are validated in a thread, which holds the GIL between its switches: the event
    # loop waits up to this long for it at each of a request's handoffs (Python's default is 5 ms).
    sys.setswitchinterval(SWITCH_INTERVAL)
    if dags is not None:  # their functions by path too (those not declared as tasks)
        python_modules = (*python_modules, *dags.modules)
    engine = Engine.open(
        db,
        python_modules=python_modules,
        migrate=migrate,
        worker=role != "api",
        lease=lease,
        egress=egress,
        run_limits=RunLimits(max_depth, max_descendants),
    )
    if dags is not None:
        engine.add_functions(dags.functions())
    if directory_url:
        try:
            engine.use_directory(directory_url)
        except ValueError as exc:
            raise LegatoError(str(exc)) from None
    if event_retention is not None:
        engine.event_retention = event_retention
    engine.starts.ttl = idempotency_ttl
    if limits is not None:
        engine.definition_limits = limits
    if max_rendered is not None:
        LIMITS.max_size = max_rendered  # process-wide: templates render wherever runs are decided
    if s3_endpoint:
        engine.results = S3Results(s3_endpoint)
    for name, url in transports:
        engine.add_transport(name, url)
    for name, destination in subscriptions:
        engine.subscribe_events(name, destination)
    if role != "all" and not engine.store.shared:
        what = "an API-only server" if role == "api" else "a worker"
        raise LegatoError(
            f"{what} needs a database other processes share: --db postgresql://... "
            "(a SQLite file belongs to one `legato serve`)"
        )
    api = role != "worker"
    app = create_app(
        engine,
        tokens=tokens,
        session_ttl=session_ttl,
        max_body=max_body,
        own_engine=False,
        api=api,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=connections.protocol(header_timeout, body_timeout),
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=max(1, math.ceil(grace)),
        server_header=False,
        proxy_headers=proxies is not None,
        forwarded_allow_ips=proxies or "",
    )
    server = DrainingServer(config, engine, grace, public_url, api)
    server.audit_retention = audit_retention
    server.dags = dags
    return server


async def register_dags(engine: Engine, folder: DagFolder) -> None:
    """Register the DAG folder's workflows (an unchanged one keeps its version); a LegatoError
    naming every workflow the engine refuses, and the file defining it."""
    problems = []
    for dag in folder.files:
        for wf in dag.workflows:
            try:
                record = await engine.register(wf)
            except LegatoError as exc:
                problems.append(f"{dag.path.name}: workflow {wf.name!r}: {exc}")
                continue
            state = "new version" if record.created else "unchanged"
            print(
                f"  dag       {wf.name} v{record.version} ({state}) from {dag.path.name}",
                file=sys.stderr,
            )
    if problems:
        raise LegatoError("DAG workflows refused:\n  " + "\n  ".join(problems))


async def started(server: DrainingServer, task: asyncio.Task[None]) -> str:
    """Wait until `server` listens (or its task ends in failure) and return its address."""
    while not server.started:
        if task.done():
            task.result()
            raise LegatoError("the server stopped before it started listening")
        await asyncio.sleep(0.02)
    return server.address


def announce(server: DrainingServer, db: str, token: str | bool | None) -> None:
    print(f"Legato {server.address}  database {mask_url(db)}", file=sys.stderr)
    if server.api:
        print(f"  web UI    {server.address}/", file=sys.stderr)
    print(f"  API docs  {server.address}/docs", file=sys.stderr)
    if not token:
        where = server.config.host
        scope = "this machine only" if is_loopback(where) else f"anyone who can reach {where}"
        print(f"  no LEGATO_API_TOKEN: the API is open to {scope}", file=sys.stderr)
    sys.stderr.flush()
