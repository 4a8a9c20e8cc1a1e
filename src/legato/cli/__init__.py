"""The `legato` command line: local commands on a database file, and commands that talk to a server."""

from __future__ import annotations

from legato.cli import audit, local, logs, remote, secret, server
from legato.cli.common import main

__all__ = ["audit", "local", "logs", "main", "remote", "secret", "server"]
