"""`legato secret set|list|delete`: the secrets templates read as `{{ secrets.NAME }}`, on a server.

`set` reads the value from standard input (a terminal prompts without echo) unless --value is given,
so the value stays out of the shell's history and the process list.
"""

from __future__ import annotations

import sys

import click

from legato.cli.common import dump_json, main
from legato.cli.remote import remote
from legato.client import Client


@main.group()
def secret() -> None:
    """Secrets that workflows read as {{ secrets.NAME }} (write-only: values are never shown)."""


@secret.command("set")
@click.argument("name")
@click.option("--value", help="The value (default: read from standard input).")
@remote
def secret_set(client: Client, name: str, value: str | None) -> None:
    """Set NAME to a value read from standard input (or --value)."""
    if value is None:
        if sys.stdin.isatty():
            value = click.prompt(f"{name}", hide_input=True)
        else:
            value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not value:
        raise click.BadParameter("the value is empty", param_hint="--value")
    answer = client.set_secret(name, value)
    click.echo(f"{answer['name']} set")


@secret.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@remote
def secret_list(client: Client, as_json: bool) -> None:
    """List the secrets' names and where each comes from (env or store)."""
    found = client.secrets()
    if as_json:
        click.echo(dump_json(found))
        return
    for s in found:
        click.echo(f"{s['name']:<32} {s['source']:<6} {s.get('updated_at') or ''}".rstrip())


@secret.command("delete")
@click.argument("name")
@remote
def secret_delete(client: Client, name: str) -> None:
    """Delete a stored secret (one set in the server's environment stays)."""
    client.delete_secret(name)
    click.echo(f"{name} deleted")
