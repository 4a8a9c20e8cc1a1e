"""Commands that talk to a Legato server by URL (`--url`, `LEGATO_URL`; `--token`, `LEGATO_API_TOKEN`)."""

from __future__ import annotations

import functools
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from legato.cli.common import dump_json, fail, main, parse_input, printable
from legato.client import ACTIVE, DEFAULT_URL, Client, Unreachable
from legato.dags import load_file, python_steps
from legato.engine.lineage import INT32_MAX
from legato.errors import DefinitionError, LegatoError, Problem, ValidationError

F = TypeVar("F", bound=Callable[..., Any])
STATUS_COLOURS = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}


def remote(fn: F) -> F:
    """Add --url and --token, open a Client for the command, and turn refusals into exit 2."""

    @click.option(
        "--url", envvar="LEGATO_URL", default=DEFAULT_URL, show_default=True, help="The server."
    )
    @click.option("--token", envvar="LEGATO_API_TOKEN", default=None, help="The API token.")
    @functools.wraps(fn)
    def wrapper(url: str, token: str | None, **kwargs: Any) -> Any:
        with Client(url, token) as client:
            try:
                return fn(client, **kwargs)
            except LegatoError as exc:
                fail(exc)

    return wrapper  # type: ignore[return-value]


def _seconds(run: dict[str, Any]) -> float | None:
    start, end = run.get("started_at"), run.get("finished_at")
    if not start:
        return None
    finish = datetime.fromisoformat(end).timestamp() if end else time.time()
    return finish - datetime.fromisoformat(start).timestamp()


def _status(status: str, width: int = 0) -> str:
    """Coloured on a terminal (click drops the colour elsewhere); padded before colouring so columns
    line up either way."""
    return click.style(f"{status:<{width}}", fg=STATUS_COLOURS.get(status))


# -- services --------------------------------------------------------------------------------


@main.group()
def service() -> None:
    """The service directory on the server."""


@service.command("add")
@click.argument("name", required=False)
@click.argument("address", required=False)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="YAML/JSON: one service, or a list (repeatable).",
)
@click.option("--timeout", help="Per-call timeout, e.g. 5s.")
@click.option("--concurrency", type=click.IntRange(1), help="Calls in flight at most.")
@click.option("--header", multiple=True, help="K=V, sent with every call (repeatable).")
@click.option("--follow-redirects", is_flag=True, help="Follow 3xx answers (each hop checked).")
@click.option(
    "--retries",
    type=click.IntRange(0),
    help="Retries of its steps' transient failures, unless a step or workflow says (0: none).",
)
@click.option("--replace", is_flag=True, help="Replace a service of the same name.")
@remote
def service_add(
    client: Client,
    name: str | None,
    address: str | None,
    files: tuple[str, ...],
    timeout: str | None,
    concurrency: int | None,
    header: tuple[str, ...],
    follow_redirects: bool,
    retries: int | None,
    replace: bool,
) -> None:
    """Add NAME at ADDRESS, or every service of each --file (all checked before any is sent)."""
    if files:
        items = _service_files(files)
    elif name and address:
        entry: dict[str, Any] = {"name": name, "base_url": address}
        if timeout:
            entry["timeout"] = timeout
        if concurrency is not None:
            entry["concurrency"] = concurrency
        if follow_redirects:
            entry["follow_redirects"] = True
        if retries is not None:
            entry["retry"] = {"retries": retries}
        if header:
            pairs = [h.split("=", 1) for h in header]
            if any(len(p) != 2 for p in pairs):
                raise click.BadParameter("must be K=V", param_hint="--header")
            entry["headers"] = dict(pairs)
        items = [entry]
    else:
        raise click.UsageError("give NAME and ADDRESS, or --file")
    have: set[str] = set()
    if len(items) > 1:  # a name the server has: refused before anything is sent (or replaced)
        have = {s.get("name") for s in client.services()}
        taken = [
            Problem(_where(item), _EXISTS.format(item["name"]))
            for item in items
            if item.get("name") in have
        ]
        if taken and not replace:
            raise DefinitionError(taken, "service")
    added_now: list[str] = []
    sending: str | None = None
    try:
        for item in items:
            sending = item["name"]
            added = client.add_service(_bare(item), replace=replace)
            sending = None
            added_now.append(added["name"])
            click.echo(f"{added['name']}  {added['base_url']}")
    except (LegatoError, KeyboardInterrupt) as exc:
        # Refused part-way (added meanwhile by someone else, refused by the server, no answer,
        # Ctrl-C): what this command added goes again, so the set is all or nothing as far as it
        # can be. Every delete is tried; what could not be undone is said, then the first error.
        unsure = sending if isinstance(exc, Unreachable | KeyboardInterrupt) else None
        _roll_back(client, added_now, have, unsure)
        raise


def _roll_back(client: Client, added: list[str], had: set[str], unsure: str | None) -> None:
    """Delete the services `added` that the server did not have before (`had`), trying each; say
    on stderr what was removed, what is left behind and why, and what was replaced for good."""
    removed: list[str] = []
    left: list[str] = []
    for name in added:
        if name in had:
            continue
        try:
            client.delete_service(name)
            removed.append(name)
        except LegatoError as exc:
            left.append(f"{name} ({exc})")
    replaced = [name for name in added if name in had]
    if removed:
        click.echo(f"removed again: {', '.join(removed)}", err=True)
    if left:
        click.secho(
            f"left behind (remove with `legato service rm NAME`): {', '.join(left)}",
            fg="red",
            err=True,
        )
    if replaced:
        click.echo(f"replaced, and not restored: {', '.join(replaced)}", err=True)
    if unsure is not None:
        click.echo(
            f"{unsure}: no answer, it may have been added (see `legato service list`)", err=True
        )


@service.command("rm")
@click.argument("names", nargs=-1, required=True)
@remote
def service_rm(client: Client, names: tuple[str, ...]) -> None:
    """Remove the services NAMES (workflows calling one fail their call until it is back)."""
    for name in names:
        client.delete_service(name)
        click.echo(f"removed {name}")


_EXISTS = "service {!r} exists; `legato service add --replace` replaces it (nothing was added)"
_FROM = "\0from"  # where an item of --file came from, for messages; never sent


def _where(item: dict[str, Any]) -> str:
    return str(item.get(_FROM, "name"))


def _bare(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != _FROM}


def _service_files(files: tuple[str, ...]) -> list[dict[str, Any]]:
    """Every service of every file, or DefinitionError naming each problem with its file (a name
    given twice in the set is one: which entry should win is anyone's guess)."""
    from legato.formats.loader import load_services

    items: list[dict[str, Any]] = []
    problems: list[Problem] = []
    first: dict[str, str] = {}
    for file in files:
        try:
            loaded = load_services(Path(file).read_bytes())
        except ValidationError as exc:
            problems.extend(
                Problem(f"{file}: {p.path}" if p.path else file, p.message) for p in exc.problems
            )
            continue
        for i, item in enumerate(loaded):
            where = f"{file}: [{i}].name" if len(loaded) > 1 else f"{file}: name"
            name = item.get("name")
            if isinstance(name, str) and name in first:
                problems.append(Problem(where, f"service {name!r} is also in {first[name]}"))
                continue
            if isinstance(name, str):
                first[name] = where.removesuffix(".name").removesuffix(": name")
            items.append({**item, _FROM: where})
    if problems:
        raise DefinitionError(problems, "service")
    return items


@service.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@remote
def service_list(client: Client, as_json: bool) -> None:
    """List the directory."""
    services = client.services()
    if as_json:
        click.echo(dump_json(services))
        return
    for s in services:
        retry = s.get("retry")
        click.echo(
            f"{s['name']:<20} {s['base_url']:<40} timeout {s['timeout']:g}s  "
            f"concurrency {s['concurrency']}"
            + (f"  retries {retry['retries']}" if isinstance(retry, dict) else "")
        )


# -- workflows and runs ----------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@remote
def apply(client: Client, file: Path) -> None:
    """Register a workflow definition (YAML or JSON) on the server, or each workflow a Python DAG
    file defines at module level (the file is imported here, as `legato_dags.<file name>`)."""
    if file.suffix == ".py":
        _apply_dag_file(client, file)
        return
    record = client.apply(file)
    state = "new version" if record["created"] else "unchanged"
    click.echo(f"{record['name']} v{record['version']} ({state})")
    for warning in record.get("warnings", ()):
        click.secho(f"warning: {warning}", fg="yellow", err=True)


def _apply_dag_file(client: Client, file: Path) -> None:
    """The server gets each workflow's definition, not the file: its Python steps run only in
    processes that import the same file under the same name (`--dags`), which is said here."""
    folder = str(file.parent.resolve())
    if folder not in sys.path:
        sys.path.append(folder)  # the file's own helper modules, as under --dags
    dag = load_file(file)
    if not dag.workflows:
        raise LegatoError(
            f"{file}: defines no workflow at module level (e.g. `@legato.dsl.workflow` on a "
            "function, or `first = first()` for a CoWorks @biz)"
        )
    for wf in dag.workflows:
        functions = python_steps(wf)
        hint = (
            f"{wf.name}: its Python steps run only where the server and its workers load "
            f"{file.name} with --dags (it is imported as {dag.module})"
        )
        try:
            record = client.apply(wf)
        except LegatoError as exc:
            if functions:
                exc.args = (f"{exc}\n{hint}",)
            raise
        state = "new version" if record["created"] else "unchanged"
        click.echo(f"{record['name']} v{record['version']} ({state})")
        if functions:
            click.echo(f"  note: {hint}", err=True)


def _progress(run: dict[str, Any], started: float) -> str:
    counts = Counter(step["status"] for step in run["steps"])
    done = sum(counts[s] for s in ("succeeded", "skipped", "failed", "cancelled"))
    running = [s["name"] for s in run["steps"] if s["status"] == "running"]
    line = (
        f"{run['status']}: {done}/{len(run['steps'])} steps done, {time.monotonic() - started:.1f}s"
    )
    if running:
        line += f"; running {', '.join(running[:3])}" + ("..." if len(running) > 3 else "")
    return line


def _wait(client: Client, run_id: str, timeout: float | None) -> dict[str, Any]:
    """Long-poll the run; on a terminal, keep one status line up to date on stderr."""
    tty = sys.stderr.isatty()
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    while True:
        left = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        run: dict[str, Any] = client.run(run_id, wait=left)
        ended = run["status"] not in ACTIVE
        if tty:
            click.echo("\r\033[K" + _progress(run, started), nl=ended, err=True)
        if ended or (deadline is not None and time.monotonic() >= deadline):
            if tty and not ended:
                click.echo(err=True)
            return run


@main.command()
@click.argument("workflow")
@click.option("--input", "input_text", help="The run's input: JSON, or @file.json.")
@click.option(
    "--version", type=click.IntRange(1, INT32_MAX), help="Pin a version (the latest by default)."
)
@click.option("--wait", is_flag=True, help="Wait for the run to end and print it.")
@click.option("--timeout", type=float, help="With --wait: give up waiting after this many seconds.")
@click.option(
    "--id",
    "run_id",
    help="The run's id: 32 lowercase hex digits, the 13th not f (a UUID's hex); used once.",
)
@click.option(
    "--idempotency-key", help="Starting again with this key (and input) answers the same run."
)
@remote
def start(
    client: Client,
    workflow: str,
    input_text: str | None,
    version: int | None,
    wait: bool,
    timeout: float | None,
    run_id: str | None,
    idempotency_key: str | None,
) -> None:
    """Start a run of WORKFLOW; prints its id, or with --wait the finished run.

    With --wait the exit code is 0 if the run succeeded, 1 if it failed or was cancelled, and 3 if it
    was still going when --timeout passed.
    """
    started = client.start(
        workflow,
        parse_input(input_text),
        version=version,
        run_id=run_id,
        idempotency_key=idempotency_key,
    )
    if not wait:
        click.echo(started["id"])
        return
    run = _wait(client, started["id"], timeout)
    _print_run(run)
    sys.exit({"succeeded": 0}.get(run["status"], 3 if run["status"] in ACTIVE else 1))


@main.command()
@click.argument("workflow")
@click.option(
    "--conf", "conf_text", help="The run's configuration (its input): JSON, or @file.json."
)
@click.option(
    "--idempotency-key", help="Triggering again with this key (and conf) answers the same run."
)
@remote
def trigger(
    client: Client, workflow: str, conf_text: str | None, idempotency_key: str | None
) -> None:
    """Trigger a run of WORKFLOW by hand; prints its id."""
    run = client.trigger(workflow, parse_input(conf_text), idempotency_key=idempotency_key)
    click.echo(run["id"])


@main.command()
@remote
def tags(client: Client) -> None:
    """List tags with the workflows that carry each."""
    for entry in client.tags():
        click.echo(f"{entry['tag']:<24} {', '.join(entry['workflows'])}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@remote
def schedules(client: Client, as_json: bool) -> None:
    """List scheduled workflows with their next fire time."""
    found = client.schedules()
    if as_json:
        click.echo(dump_json(found))
        return
    for s in found:
        state = "paused" if s["paused"] else f"next {s['next_fire'] or 'never (ended)'}"
        click.echo(f"{s['workflow']:<24} {s['schedule']!s:<16} {state}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@remote
def triggers(client: Client, as_json: bool) -> None:
    """List the broker triggers the server subscribed, its message counts and the last rejected
    messages."""
    found = client.triggers()
    if as_json:
        click.echo(dump_json(found))
        return
    for t in found["subscribed"]:
        where = next(f"{k} {t[k]}" for k in ("topic", "subject", "queue") if k in t)
        mine = ", ".join(f"{k} {v}" for k, v in (t.get("messages") or {}).items())
        line = f"{t['workflow']:<24} {t['transport']}: {where} (group {t['group']})"
        click.echo(f"{line}: {mine}" if mine else line)
    counts = ", ".join(f"{k} {v}" for k, v in found["messages"].items())
    click.echo(f"messages: {counts}")
    for r in found["rejected"]:  # ids and reasons come from messages: no terminal controls
        text = f"rejected {r['at']} {r['workflow']} {r['id']}: {r['reason']}"
        click.echo(printable(text))


@main.command()
@click.argument("workflow")
@remote
def pause(client: Client, workflow: str) -> None:
    """Pause WORKFLOW's schedule."""
    client.pause(workflow)
    click.echo(f"{workflow} paused")


@main.command()
@click.argument("workflow")
@remote
def unpause(client: Client, workflow: str) -> None:
    """Unpause WORKFLOW's schedule (with catchup, missed intervals then run)."""
    entry = client.unpause(workflow)
    click.echo(f"{workflow} unpaused; next {entry['next_fire'] or 'never (ended)'}")


@main.command()
@click.option("--workflow", help="Only this workflow's runs.")
@click.option("--status", help="Only runs in this status.")
@click.option("--tag", help="Only runs of workflows with this tag.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--cursor", help="Start after this page cursor (printed at the end of a page).")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@remote
def runs(
    client: Client,
    workflow: str | None,
    status: str | None,
    tag: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    page = client.runs(workflow=workflow, status=status, limit=limit, cursor=cursor, tag=tag)
    if as_json:
        click.echo(dump_json(page))
        return
    for run in page["runs"]:
        took = _seconds(run)
        took_text = f"{took:.2f}s" if took is not None else "-"
        click.echo(
            f"{run['id']}  {run['workflow']:<20} v{run['version']:<3} "
            f"{_status(run['status'], 10)} {run['created_at']}  {took_text}"
        )
    if page["next_cursor"]:
        click.echo(f"more: legato runs --cursor {page['next_cursor']}", err=True)


def _print_run(run: dict[str, Any]) -> None:
    took = _seconds(run)
    click.echo(
        f"run {run['id']}  {run['workflow']} v{run['version']}  {_status(run['status'])}"
        + (f"  {took:.2f}s" if took is not None else "")
    )
    for step in run["steps"]:
        tries = f"  {step['attempt']} attempts" if step["attempt"] > 1 else ""
        reason = f"  ({step['reason']})" if step.get("reason") else ""
        click.echo(f"  {step['name']:<24} {_status(step['status'], 10)}{tries}{reason}")
        if step.get("error"):
            click.echo(f"      {step['error'].get('message', step['error'])}")
    if run.get("error"):
        click.secho(f"error: {run['error'].get('message', run['error'])}", fg="red")
    click.echo("output: " + dump_json(run.get("output")))


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole run as JSON.")
@remote
def show(client: Client, run_id: str, as_json: bool) -> None:
    """Show a run: status, each step, output or error."""
    run = client.run(run_id)
    if as_json:
        click.echo(dump_json(run))
    else:
        _print_run(run)


def _bulk_options(fn: F) -> F:
    """The filter of a bulk cancel or retry (instead of a RUN_ID)."""
    options = [
        click.option("--workflow", help="Every run of this workflow (with the other filters)."),
        click.option("--status", help="Only runs in this status."),
        click.option("--tag", help="Only runs of workflows with this tag."),
        click.option("--created-after", help="Created at or after (ISO 8601 or epoch seconds)."),
        click.option("--created-before", help="Created before (ISO 8601 or epoch seconds)."),
        click.option("all_runs", "--all", is_flag=True, help="Every run, when no filter is given."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _bulk(action: Callable[..., Any], verb: str, run_id: str | None, runs: dict[str, Any]) -> bool:
    """Carry out a bulk action if a filter was given (not with a RUN_ID); False if none was."""
    given = {k: v for k, v in runs.items() if v}
    if not given:
        if run_id is None:
            raise click.UsageError(
                "give a RUN_ID, or a filter (--workflow, --status, ...) or --all"
            )
        return False
    if run_id is not None:
        raise click.UsageError("give a RUN_ID or a filter, not both")
    for name in ("created_after", "created_before"):
        text = given.get(name)
        if text is not None and text.replace(".", "", 1).isdigit():
            given[name] = float(text)
    found = action(**given)
    click.echo(f"{verb} {found['count']} run(s)")
    for shown in found["ids"]:
        click.echo(shown)
    return True


@main.command()
@click.argument("run_id", required=False)
@_bulk_options
@remote
def cancel(client: Client, run_id: str | None, **runs: Any) -> None:
    """Cancel a run that has not ended (and its sub-workflow runs), or every run a filter
    matches: `legato cancel --workflow NAME --status running`."""
    if _bulk(client.cancel_runs, "cancelled", run_id, runs):
        return
    assert run_id is not None
    run = client.cancel(run_id)
    click.echo(f"{run['id']} {run['status']}")


@main.command()
@click.argument("run_id", required=False)
@_bulk_options
@remote
def retry(client: Client, run_id: str | None, **runs: Any) -> None:
    """Run a failed or cancelled run again from the steps that did not succeed, or every run a
    filter matches: `legato retry --workflow NAME --status failed`."""
    if _bulk(client.retry_runs, "retrying", run_id, runs):
        return
    assert run_id is not None
    run = client.retry(run_id)
    click.echo(f"{run['id']} {run['status']}")
