"""Commands that work on a definition file or a database directly, with no server."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml

from legato import aio
from legato.cli.common import DEFAULT_DB, dump_json, fail, main, parse_input
from legato.engine.runtime import Engine
from legato.engine.state import RunState
from legato.errors import LegatoError, ValidationError
from legato.formats.loader import Definition, load_definition, load_services
from legato.model.service import Service
from legato.store.protocol import open_store


def summarize(state: RunState) -> dict[str, Any]:
    info = state.info
    out: dict[str, Any] = {
        "id": info.id,
        "workflow": info.workflow,
        "version": info.version,
        "status": info.status,
    }
    if info.finished_at and info.started_at:
        out["duration_ms"] = round((info.finished_at - info.started_at) * 1000, 1)
    out["output"] = info.output
    if info.error:
        out["error"] = info.error
    out["steps"] = {
        n: s.status + (f" ({s.reason})" if s.reason else "") for n, s in state.steps.items()
    }
    return out


def _not_python(file: str) -> None:
    if file.endswith(".py"):  # read as YAML it would be "malformed YAML", which misleads
        fail(
            LegatoError(
                f"{file}: a DAG file (Python), not a YAML/JSON definition: register its workflows "
                "with `legato apply FILE.py`, or serve its folder with `legato serve --dags DIR`"
            )
        )


def _load_file(file: str) -> Definition:
    """A definition file, or exit 2 with every problem listed by path."""
    _not_python(file)
    try:
        return load_definition(Path(file).read_bytes())
    except ValidationError as exc:
        fail(exc)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def validate(file: str) -> None:
    """Check a workflow definition (YAML or JSON) and print its steps in order."""
    definition = _load_file(file)
    wf = definition.workflow
    click.echo(f"{wf.name}: valid, {len(wf.steps)} steps")
    for step in wf.steps.values():
        after = f" after {', '.join(step.depends_on)}" if step.depends_on else ""
        click.echo(f"  {step.name} ({step.kind}){after}")


def _read_services(path: str | None) -> list[Service]:
    if not path:
        return []
    return [Service.from_dict(item) for item in load_services(Path(path).read_bytes())]


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_text", help="The run's input: JSON, or @file.json.")
@click.option("--db", default=DEFAULT_DB, envvar="LEGATO_DATABASE_URL", show_default=True)
@click.option(
    "--services",
    type=click.Path(exists=True, dir_okay=False),
    help="A YAML/JSON file of services (one, or a list) to register first.",
)
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the run to end.")
def run(
    file: str, input_text: str | None, db: str, services: str | None, timeout: float | None
) -> None:
    """Register a workflow definition, run it once on the embedded engine and print the result."""
    _not_python(file)
    payload = parse_input(input_text)

    async def go(document: bytes, directory: list[Service]) -> RunState:
        async with Engine.open(db) as engine:
            for service in directory:
                await engine.put_service(service)
            record = await engine.apply(document)
            return await engine.run(record.name, payload, timeout=timeout)

    try:
        state = aio.run(go(Path(file).read_bytes(), _read_services(services)))
    except LegatoError as exc:
        fail(exc)
    click.echo(dump_json(summarize(state)))
    sys.exit(0 if state.info.status == "succeeded" else 1)


@main.command()
@click.option("--db", default=DEFAULT_DB, envvar="LEGATO_DATABASE_URL", show_default=True)
def resume(db: str) -> None:
    """Resume every unfinished run, and wait until each has ended or waits for something from
    outside (a callback, an event) or for a timer more than a minute away."""

    async def go() -> tuple[int, int]:
        engine = Engine.open(db)
        if engine.store.shared:
            raise LegatoError(
                "legato resume is for a SQLite file; on PostgreSQL, `legato worker` resumes runs"
            )
        async with engine:
            click.echo(f"resuming {engine.active_runs()} run(s)", err=True)
            while True:
                due = await engine.store.next_wake()
                if not engine.active_runs() and (due is None or due > time.time() + 60):
                    break
                await asyncio.sleep(0.05)
            waiting = await engine.store.list_runs(status="running", limit=10_000)
            return engine.stats["claimed"], len(waiting)

    try:
        claimed, waiting = aio.run(go())
    except LegatoError as exc:
        fail(exc)
    click.echo(f"resumed {claimed} run(s); {waiting} still wait", err=True)


@main.command()
@click.option("--db", default=DEFAULT_DB, envvar="LEGATO_DATABASE_URL", show_default=True)
def migrate(db: str) -> None:
    """Bring the database's schema up to this version of Legato (a new one is created)."""

    async def go() -> tuple[int, int]:
        store = open_store(db, migrate=True)
        await store.open()
        try:
            return store.found_version, store.version
        finally:
            await store.close()

    try:
        before, after = aio.run(go())
    except LegatoError as exc:
        fail(exc)
    if before == after:
        click.echo(f"schema version {after}: up to date")
    else:
        click.echo(f"schema version {before or 'none'} -> {after}")


@main.command("export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def export(file: str) -> None:
    """Print a definition in the native YAML form (services-in-order documents are expanded)."""
    definition = _load_file(file)
    click.echo(yaml.safe_dump(definition.workflow.to_dict(), sort_keys=False))
