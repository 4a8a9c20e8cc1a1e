"""The `legato` command line."""

from __future__ import annotations

import asyncio
import sys
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
import yaml

from legato import aio
from legato.engine.runtime import Engine
from legato.engine.state import RunState
from legato.errors import LegatoError, ValidationError
from legato.formats.loader import Definition, load_definition, parse_document
from legato.model.service import Service

DEFAULT_DB = "sqlite:///legato.db"


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


def _fail(exc: LegatoError) -> NoReturn:
    click.secho(str(exc), fg="red", err=True)
    sys.exit(2)


def _parse_input(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--input")
    return value


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


@click.group()
@click.version_option(package_name="legato")
def main() -> None:
    """Legato: durable workflows across your HTTP microservices."""


def _load_file(file: str) -> Definition:
    """A definition file, or exit 2 with every problem listed by path."""
    try:
        return load_definition(Path(file).read_bytes())
    except ValidationError as exc:
        _fail(exc)


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
    data = parse_document(Path(path).read_bytes())
    items = data.get("services", data) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise click.BadParameter("must hold a list of services", param_hint="--services")
    return [Service.from_dict(item, f"services[{i}]") for i, item in enumerate(items)]


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--input", "input_text", help="The run's input: JSON, or @file.json.")
@click.option("--db", default=DEFAULT_DB, envvar="LEGATO_DATABASE_URL", show_default=True)
@click.option(
    "--services",
    type=click.Path(exists=True, dir_okay=False),
    help="A YAML/JSON list of services to register first.",
)
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the run to end.")
def run(
    file: str, input_text: str | None, db: str, services: str | None, timeout: float | None
) -> None:
    """Register a workflow definition, run it once on the embedded engine and print the result."""
    payload = _parse_input(input_text)

    async def go(document: bytes, directory: list[Service]) -> RunState:
        async with Engine.open(db) as engine:
            for service in directory:
                await engine.put_service(service)
            record = await engine.apply(document)
            return await engine.run(record.name, payload, timeout=timeout)

    try:
        state = aio.run(go(Path(file).read_bytes(), _read_services(services)))
    except LegatoError as exc:
        _fail(exc)
    click.echo(_json(summarize(state)))
    sys.exit(0 if state.info.status == "succeeded" else 1)


@main.command()
@click.option("--db", default=DEFAULT_DB, envvar="LEGATO_DATABASE_URL", show_default=True)
def resume(db: str) -> None:
    """Resume every unfinished run in the database and wait until they have all ended."""

    async def go() -> int:
        async with Engine.open(db) as engine:
            count = engine.active_runs()
            click.echo(f"resuming {count} run(s)", err=True)
            while engine.active_runs():
                await asyncio.sleep(0.05)
            return count

    try:
        aio.run(go())
    except LegatoError as exc:
        _fail(exc)


@main.command()
@click.option("--db", default=DEFAULT_DB, envvar="LEGATO_DATABASE_URL", show_default=True)
def demo(db: str) -> None:
    """Start the sample services, register them and the sample workflows, and run them end to end."""
    from legato.samples import services as samples

    async def go() -> list[RunState]:
        runner, base = await samples.start()
        try:
            async with Engine.open(db) as engine:
                for service in samples.directory(base):
                    await engine.put_service(service)
                click.echo(f"sample services on {base}; database {db}", err=True)
                files = resources.files("legato.samples")
                for name in ("order.yaml", "process-text.json"):
                    record = await engine.apply(files.joinpath(name).read_bytes())
                    click.echo(f"workflow {record.name} v{record.version}", err=True)
                runs: list[tuple[str, dict[str, Any]]] = [
                    (
                        "take-order",
                        {
                            "order_id": "A-1001",
                            "email": "ada@example.com",
                            "amount": 42.5,
                            "items": ["notebook", "pencil"],
                        },
                    ),
                    (
                        "take-order",
                        {
                            "order_id": "A-1002",
                            "email": "bob@example.com",
                            "amount": 12000,
                            "items": ["piano"],
                        },
                    ),
                    ("process-text", {"message": "durable workflows for microservices"}),
                ]
                ids = [await engine.start_run(name, data) for name, data in runs]
                return [await engine.wait(run_id, timeout=30) for run_id in ids]
        finally:
            await runner.cleanup()

    try:
        states = aio.run(go())
    except LegatoError as exc:
        _fail(exc)
    for state in states:
        click.echo(_json(summarize(state)))
    ok = all(s.info.status == "succeeded" for s in states)
    click.secho(
        "demo: all runs succeeded" if ok else "demo: some runs did not succeed",
        fg="green" if ok else "red",
        err=True,
    )
    sys.exit(0 if ok else 1)


@main.command("export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def export(file: str) -> None:
    """Print a definition in the native YAML form (services-in-order documents are expanded)."""
    definition = _load_file(file)
    click.echo(yaml.safe_dump(definition.workflow.to_dict(), sort_keys=False))


if __name__ == "__main__":
    main()
