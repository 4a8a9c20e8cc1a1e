"""`legato logs RUN [STEP]`: what a run's steps printed and logged, one line each, oldest first.

Lines come from steps and from services holding only a callback token, so the text output shows
control characters visibly (`\x1b`, `\u202e`) rather than handing them to the terminal, whether it
is one or not: escape sequences could set the title, clear the screen or reorder text. `--json`
keeps the lines as they are, escaped by JSON. A message's later lines are shown indented behind
`  | ` (as a traceback's are), so a service cannot forge lines of another step with newlines.
"""

from __future__ import annotations

from typing import Any

import click

from legato.cli.common import continued, dump_json, main, one_line
from legato.cli.remote import remote
from legato.client import Client

LEVEL_COLOURS = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "red"}


def format_line(line: dict[str, Any]) -> str:
    """`2026-12-01T10:00:00.000Z INFO    step[1] message`. A message's later lines (a traceback's,
    a callback's text with newlines) are indented behind `  | `, so none can pass for the header of
    another line; the other fields are kept on one line."""
    text = one_line(str(line["level"]))
    level = click.style(f"{text:<7}", fg=LEVEL_COLOURS.get(text))
    ts, step, attempt = (one_line(str(line[f])) for f in ("ts", "step", "attempt"))
    return f"{ts} {level} {step}[{attempt}] {continued(str(line['message']))}"


@main.command()
@click.argument("run_id")
@click.argument("step", required=False)
@click.option("--attempt", type=click.IntRange(1), help="Only this attempt of STEP.")
@click.option("--json", "as_json", is_flag=True, help="Print the lines as a JSON list.")
@remote
def logs(client: Client, run_id: str, step: str | None, attempt: int | None, as_json: bool) -> None:
    """Show what a run's Python steps printed and logged, and what services sent with their
    callbacks, per attempt (a failed Python step's traceback included)."""
    if attempt is not None and step is None:
        raise click.UsageError("--attempt needs a STEP")
    lines: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.logs(run_id, step, attempt=attempt, cursor=cursor)
        if as_json:
            lines.extend(page["logs"])
        else:
            for line in page["logs"]:
                click.echo(format_line(line))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    if as_json:
        click.echo(dump_json(lines))
