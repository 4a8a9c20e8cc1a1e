"""What every `legato` command shares: the group, JSON output, input parsing, error exits, and
text made safe for a terminal (`printable`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from legato.errors import LegatoError

DEFAULT_DB = "sqlite:///legato.db"


@click.group()
@click.version_option(package_name="legato")
def main() -> None:
    """Legato: durable workflows across your HTTP microservices."""


def dump_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


def fail(exc: LegatoError) -> NoReturn:
    """Print the error (and each problem the server named) in red and exit 2."""
    text = str(exc)
    click.secho(text, fg="red", err=True)
    for problem in getattr(exc, "problems", None) or []:
        if isinstance(problem, dict) and problem.get("path"):
            line = f"  {problem['path']}: {problem.get('message', '')}"
            if line not in text:  # a list of problems is in the message already
                click.secho(line, fg="red", err=True)
    sys.exit(2)


def parse_input(text: str | None) -> dict[str, Any]:
    """A JSON object given inline, or as @file.json."""
    if not text:
        return {}
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {text[1:]}: {exc.strerror}", param_hint="--input"
            ) from None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--input")
    return value


# C0 controls but tab and newline, DEL, C1 controls, the Unicode line and paragraph separators, and
# the bidirectional overrides and isolates.
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
CONTINUED = "  | "  # the mark of a multi-line text's later lines (see `continued`)


def printable(text: str) -> str:
    """`text` with its control characters shown as escapes (tab and newline kept)."""
    return _CONTROL.sub(_escape, text)


def one_line(text: str) -> str:
    """`text` made printable on one line: its newlines shown as `\\n` too."""
    return printable(text).replace("\n", "\\n")


def continued(text: str) -> str:
    """`text` made printable, each line after the first starting with CONTINUED: however it was
    written, a later line cannot pass for a line of its own (say, a log line of another step)."""
    return ("\n" + CONTINUED).join(printable(text).split("\n"))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
