"""`legato audit`: the changes made through the API and the UI, with the token that made each."""

from __future__ import annotations

import click

from legato.cli.common import dump_json, main
from legato.cli.remote import remote
from legato.client import Client


@main.command()
@click.option("--since", help="Only changes since this ISO time or this long ago (e.g. 1h).")
@click.option("--token-name", help="Only changes made with the token of this name.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", help="Start after this page cursor (printed at the end of a page).")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@remote
def audit(
    client: Client,
    since: str | None,
    token_name: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List the audit log, newest first (needs an admin token)."""
    page = client.audit(since=since, token=token_name, limit=limit, cursor=cursor)
    if as_json:
        click.echo(dump_json(page))
        return
    for e in page["entries"]:
        click.echo(
            f"{e['at']}  {e['token'] or '-':<12} {e['status']}  {e['method']:<6} {e['path']}"
            f"  {e['client'] or ''}"
        )
    if page["next_cursor"]:
        click.echo(f"more: legato audit --cursor {page['next_cursor']}", err=True)
