"""`legato serve` and `legato demo`: the server process, and the tour that starts one."""

from __future__ import annotations

import asyncio
import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import click

from legato import aio
from legato.cli.common import DEFAULT_DB, dump_json, fail, main
from legato.client import AsyncClient
from legato.dags import DEFAULT_IMPORT_TIMEOUT, load_folder
from legato.engine.egress import EgressPolicy, EgressSyntaxError
from legato.engine.lineage import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_DESCENDANTS,
    INT32_MAX,
    MAX_MAX_DEPTH,
)
from legato.errors import LegatoError
from legato.masking import mask_url
from legato.model.durations import parse_duration
from legato.model.limits import (
    DEFAULT_MAX_DEFINITION,
    DEFAULT_MAX_NESTING,
    DEFAULT_MAX_STEPS,
    DefinitionLimits,
)
from legato.sandbox import DEFAULT_MAX_RENDERED
from legato.server.app import DEFAULT_MAX_BODY
from legato.server.serve import DrainingServer, announce, build_server, started
from legato.store import faults

DEMO_ORDER = {
    "order_id": "A-1001",
    "email": "ada@example.com",
    "amount": 42.5,
    "items": ["notebook", "pencil"],
}


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):  # FloatRange lets NaN through (NaN compares false with both ends)
        raise click.BadParameter("must be a number of seconds")
    return value


def _pair(value: str, sep: str, shape: str) -> tuple[str, str]:
    name, found, rest = value.partition(sep)
    if not found or not name or not rest:
        raise click.BadParameter(f"must be {shape}, not {value!r}")
    return name, rest


def _egress(ctx: click.Context, param: click.Parameter, value: str | None) -> EgressPolicy:
    try:
        return EgressPolicy.parse(value)
    except EgressSyntaxError as exc:
        raise click.BadParameter(str(exc)) from None


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _positive_duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    seconds = _duration(ctx, param, value)
    if not seconds > 0:  # 0 would close every connection at once, not switch the bound off
        raise click.BadParameter(f"must be longer than 0s, not {value!r}")
    return seconds


GRACE = click.option(
    "--grace",
    type=click.FloatRange(0, 3600),
    callback=_finite,
    default=10.0,
    show_default=True,
    help="Seconds steps under way get to finish on SIGTERM.",
)


def _server_options(fn: Any) -> Any:
    options = [
        click.option("--db", default=DEFAULT_DB, envvar="LEGATO_DATABASE_URL", show_default=True),
        click.option("--host", default="127.0.0.1", show_default=True),
        click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True),
        click.option(
            "--token",
            envvar="LEGATO_API_TOKEN",
            default=None,
            help="Require this bearer token (an admin token named `default`).",
        ),
        GRACE,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _engine_options(fn: Any) -> Any:
    """What the engine of `serve` and `worker` is told: what it may run, where it may publish and
    listen, and how long its claims on runs last."""
    options = [
        click.option(
            "--python-module",
            "python_modules",
            multiple=True,
            envvar="LEGATO_PYTHON_MODULES",
            help="A module whose functions definitions' Python steps may call (repeatable). "
            "None by default.",
        ),
        click.option(
            "--transport",
            "transports",
            multiple=True,
            callback=lambda ctx, param, values: tuple(_pair(v, "=", "NAME=URL") for v in values),
            help="A broker emit steps can name: NAME=nats://..., NAME=amqp://..., "
            "NAME=kafka://... (repeatable).",
        ),
        click.option(
            "--subscribe",
            "subscriptions",
            multiple=True,
            callback=lambda ctx, param, values: tuple(
                _pair(v, ":", "NAME:DESTINATION") for v in values
            ),
            help="Turn messages on a transport's subject, queue or topic into events: "
            "NAME:DESTINATION.",
        ),
        click.option("--migrate", is_flag=True, help="Upgrade an older database schema at start."),
        click.option(
            "--dags",
            envvar="LEGATO_DAGS",
            type=click.Path(file_okay=False, path_type=Path),
            help="A folder of DAG files: each *.py in it (not in subfolders; not _*.py) is "
            "imported as legato_dags.<file name>, its module-level workflows are registered "
            "(`serve`) and its Python tasks may run here. A file that fails to import stops the "
            "start, named with the failing line.",
        ),
        click.option(
            "--dags-import-timeout",
            envvar="LEGATO_DAGS_IMPORT_TIMEOUT",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_IMPORT_TIMEOUT,
            show_default=True,
            help="Seconds a DAG file may take to import; one still importing stops the start.",
        ),
        click.option(
            "--directory-url",
            envvar="LEGATO_DIRECTORY_URL",
            help="A CoWorks-style directory service: a service Legato's own directory does not "
            "have is looked up at GET URL/url/NAME -> {url, token} (cached 60 s); the token is "
            "sent as the Authorization header.",
        ),
        click.option(
            "--egress",
            envvar="LEGATO_EGRESS",
            callback=_egress,
            help="Where steps, polls and webhooks may connect: rules [!]HOST[:PORTS] separated by "
            "commas, e.g. '10.0.0.0/8:443,*.example.com,!loopback'; HOST may be the keyword "
            "loopback or private. Checked on resolved addresses and at each redirect hop. "
            "Link-local and cloud metadata addresses are refused unless named. Default: any "
            "other address.",
        ),
        click.option(
            "--s3-endpoint",
            envvar="LEGATO_S3_ENDPOINT",
            help="An S3-compatible endpoint for polled results (AWS's by default; credentials as "
            "for AWS).",
        ),
        click.option(
            "--event-retention",
            default="1h",
            show_default=True,
            callback=_duration,
            help="How long an event nobody listens for yet is kept for a listener that starts "
            "later.",
        ),
        click.option(
            "--public-url",
            envvar="LEGATO_PUBLIC_URL",
            help="The base URL services use to reach the API (callback URLs); for `serve`, its "
            "own address by default.",
        ),
        click.option(
            "--lease",
            default="30s",
            show_default=True,
            callback=_duration,
            help="How long a claim on a run lasts unless renewed: a run whose worker died is "
            "taken over after it.",
        ),
        click.option(
            "--max-depth",
            type=click.IntRange(1, MAX_MAX_DEPTH),
            default=DEFAULT_MAX_DEPTH,
            envvar="LEGATO_MAX_DEPTH",
            show_default=True,
            help="Sub-workflow levels under a root run; a step that would start one deeper fails "
            "with kind `limit`.",
        ),
        click.option(
            "--max-descendants",
            type=click.IntRange(1, INT32_MAX),
            default=DEFAULT_MAX_DESCENDANTS,
            envvar="LEGATO_MAX_DESCENDANTS",
            show_default=True,
            help="Sub-workflow runs one root run may start in all, at every depth; past it a step "
            "fails with kind `limit`.",
        ),
        click.option(
            "--max-rendered",
            type=click.IntRange(1024),
            default=DEFAULT_MAX_RENDERED,
            envvar="LEGATO_MAX_RENDERED",
            show_default=True,
            help="Bytes a rendered template value (or a step's request) may have; past it the "
            "step fails with kind `limit`, and nothing is stored or sent.",
        ),
        click.option(
            "--log-level",
            type=click.Choice(["critical", "error", "warning", "info", "debug"]),
            default="info",
            show_default=True,
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_server(announce_it: Any, **settings: Any) -> None:
    if faults.ENV_PROBLEMS:
        fail(LegatoError("; ".join(faults.ENV_PROBLEMS)))
    folder = settings.pop("dags", None)
    import_timeout = settings.pop("dags_import_timeout", DEFAULT_IMPORT_TIMEOUT)
    if folder is not None:
        try:
            settings["dags"] = load_folder(
                folder, import_timeout, lambda line: click.echo(line, err=True)
            )
        except LegatoError as exc:
            fail(exc)

    async def go() -> None:
        server = build_server(**settings)
        task = asyncio.create_task(server.serve())
        await started(server, task)
        announce_it(server)
        await task

    try:
        aio.run(go())
    except LegatoError as exc:
        fail(exc)
    except (
        KeyboardInterrupt
    ):  # Ctrl-C, after the drain: the shell's code for it, without "Aborted!"
        sys.exit(130)


@main.command()
@_server_options
@click.option(
    "--max-body",
    type=click.IntRange(1024),
    default=DEFAULT_MAX_BODY,
    show_default=True,
    help="Bytes per request.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(1),
    default=DEFAULT_MAX_STEPS,
    envvar="LEGATO_MAX_STEPS",
    show_default=True,
    help="Steps a workflow definition may have.",
)
@click.option(
    "--max-nesting",
    type=click.IntRange(4, 250),
    default=DEFAULT_MAX_NESTING,
    envvar="LEGATO_MAX_NESTING",
    show_default=True,
    help="Levels of nesting a workflow definition may have.",
)
@click.option(
    "--max-definition",
    type=click.IntRange(1024),
    default=DEFAULT_MAX_DEFINITION,
    envvar="LEGATO_MAX_DEFINITION",
    show_default=True,
    help="Bytes a workflow definition may have (as JSON).",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="Serve a non-loopback address without a token.",
)
@click.option(
    "--token-file",
    envvar="LEGATO_TOKEN_FILE",
    type=click.Path(dir_okay=False),
    help="A TOML file of named tokens with roles (read, operate, admin).",
)
@click.option(
    "--session-ttl",
    envvar="LEGATO_SESSION_TTL",
    default="12h",
    show_default=True,
    callback=_duration,
    help="How long a UI sign-in lasts.",
)
@click.option(
    "--api-only",
    is_flag=True,
    help="Run no steps: `legato worker` processes sharing the (PostgreSQL) database run them.",
)
@click.option(
    "--idempotency-ttl",
    default="24h",
    show_default=True,
    envvar="LEGATO_IDEMPOTENCY_TTL",
    callback=_duration,
    help="How long a start's Idempotency-Key answers the run it made.",
)
@click.option(
    "--header-timeout",
    default="10s",
    show_default=True,
    callback=_positive_duration,
    help="Close a connection that has not sent a request's headers this long after it began.",
)
@click.option(
    "--body-timeout",
    default="30s",
    show_default=True,
    callback=_positive_duration,
    help="Answer 408 and close a connection whose request body is not all in this long after "
    "its headers.",
)
@click.option(
    "--audit-retention",
    envvar="LEGATO_AUDIT_RETENTION",
    default="90d",
    show_default=True,
    callback=_duration,
    help="How long audit log rows are kept; older ones are deleted by the server.",
)
@click.option(
    "--forwarded-allow-ips",
    envvar="LEGATO_FORWARDED_ALLOW_IPS",
    help="Reverse proxies (IP addresses or CIDRs, comma-separated, or '*') whose "
    "X-Forwarded-For and X-Forwarded-Proto are believed. Default: nobody's.",
)
@_engine_options
def serve(
    db: str,
    token: str | None,
    token_file: str | None,
    max_body: int,
    max_steps: int,
    max_nesting: int,
    max_definition: int,
    allow_unauthenticated: bool,
    api_only: bool,
    **settings: Any,
) -> None:
    """Serve the REST API and run the engine, in one process, until SIGTERM or Ctrl-C."""
    _run_server(
        lambda server: announce(server, db, bool(token or token_file)),
        db=db,
        token=token,
        token_file=token_file,
        max_body=max_body,
        limits=DefinitionLimits(max_steps, max_nesting, max_definition),
        allow_open=allow_unauthenticated,
        role="api" if api_only else "all",
        **settings,
    )


@main.command()
@click.option("--db", default=DEFAULT_DB, envvar="LEGATO_DATABASE_URL", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the probes listen.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8081,
    show_default=True,
    help="Port of /healthz and /metrics (0: any free port).",
)
@GRACE
@_engine_options
def worker(db: str, **settings: Any) -> None:
    """Run the engine without the API: claim runs from the shared database and carry them out.

    Start as many as the load needs, on as many machines, beside one or more `legato serve
    --api-only` (or plain `legato serve`) processes on the same PostgreSQL database.
    """

    def announce_worker(server: DrainingServer) -> None:
        click.echo(
            f"Legato worker {server.engine.id}  database {mask_url(db)}  probes {server.address}/healthz",
            err=True,
        )
        if server.dags is not None:
            workflows = ", ".join(sorted(wf.name for wf in server.dags.workflows)) or "none"
            click.echo(f"  dags      runs the Python tasks of {workflows}", err=True)

    _run_server(announce_worker, db=db, role="worker", allow_open=True, **settings)


async def _tour(server: DrainingServer, base: str, token: str | None) -> dict[str, Any]:
    """Through the API, as any client would: register, apply, run one order, return it."""
    from legato.samples import services as samples

    files = resources.files("legato.samples")
    async with AsyncClient(server.address, token) as client:
        for service in samples.directory(base):
            await client.add_service(service, replace=True)
        for name in ("order.yaml", "process-text.json"):
            record = await client.apply(files.joinpath(name).read_bytes())
            click.echo(f"workflow {record['name']} v{record['version']}", err=True)
        run: dict[str, Any] = await client.start("take-order", DEMO_ORDER, wait=60)
        return run


@main.command()
@_server_options
@click.option(
    "--serve/--exit",
    "keep_serving",
    default=None,
    help="Keep serving after the run, or stop. By default: serve when run from a terminal.",
)
def demo(
    db: str, host: str, port: int, token: str | None, grace: float, keep_serving: bool | None
) -> None:
    """Start the server with the sample services, run the sample order, and keep serving.

    From a terminal the server stays up for you to look at (Ctrl-C stops it); from a script or CI,
    where nobody will look, it stops after the run.
    """
    if keep_serving is None:
        keep_serving = sys.stdin.isatty() and sys.stdout.isatty()
    exit_after = not keep_serving
    from legato.samples import services as samples

    async def go() -> dict[str, Any]:
        runner, base = await samples.start()
        # The demo's database is a scratch one: bring an older one up to date rather than stop.
        server = build_server(db, host=host, port=port, token=token, grace=grace, migrate=True)
        task = asyncio.create_task(server.serve())
        try:
            await started(server, task)
            click.echo(f"sample services on {base}", err=True)
            run = await _tour(server, base, token)
            click.echo(dump_json(_brief(run)))
            ok = run["status"] == "succeeded"
            click.secho(
                f"demo: the order run {run['status']}",
                fg="green" if ok else "red",
                err=True,
            )
            announce(server, db, token)
            if exit_after:
                server.should_exit = True
            else:
                click.echo(
                    f"  this run   {server.address}/runs/{run['id']}\n"
                    f"  as JSON    {server.address}/api/runs/{run['id']}\n"
                    f"  try        legato runs --url {server.address}\n"
                    "  Ctrl-C stops the server",
                    err=True,
                )
            await task
            return run
        finally:
            if not task.done():
                server.should_exit = True
                await task
            await runner.cleanup()

    try:
        run = aio.run(go())
    except LegatoError as exc:
        fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0 if run["status"] == "succeeded" else 1)


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": run["id"],
        "workflow": run["workflow"],
        "status": run["status"],
        "output": run["output"],
        "error": run["error"],
        "steps": {s["name"]: s["status"] for s in run["steps"]},
    }
