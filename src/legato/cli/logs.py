"""`legato logs RUN [STEP]`: what a run's steps printed and logged, one line each, oldest first.

Lines come from steps and from services holding only a callback token, so the text output shows
control characters visibly (`\x1b`, `\u202e`) rather than handing them to the terminal, whether it
is one or not: escape sequences could set the title, clear the screen or reorder text. `--json`
keeps the lines as they are, escaped by JSON.
"""

from __future__ import annotations

from typing import Any

import click

from legato.cli.common import dump_json, main, printable
from legato.cli.remote import remote
from legato.client import Client

LEVEL_COLOURS = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "red"}


def format_line(line: dict[str, Any]) -> str:
    """`2026-12-01T10:00:00.000Z INFO    step[1] message` (a traceback keeps its own lines)."""
    level = click.style(f"{line['level']:<7}", fg=LEVEL_COLOURS.get(line["level"]))
    step, message = printable(str(line["step"])), printable(str(line["message"]))
    return f"{line['ts']} {level} {step}[{line['attempt']}] {message}"


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
