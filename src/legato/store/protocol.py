"""The Store protocol: everything the engine keeps, behind one small async interface.

The engine hands the store whole Decisions; a backend commits a batch of them in one transaction (group
commit), so durability costs one commit per batch, not one per step transition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from legato.engine.state import Attempt, Decision, RunInfo, RunState
from legato.errors import LegatoError
from legato.model.service import Service


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    name: str
    version: int
    digest: str
    spec: dict[str, Any]
    created_at: float
    created: bool = False  # True when save_workflow made this version just now


@dataclass(frozen=True, slots=True)
class KeptEvent:
    """An event that arrived when no step was listening for it, kept until `expires_at`."""

    id: str
    type: str
    key: str
    data: Any
    created_at: float
    expires_at: float


class Store(Protocol):
    url: str
    migrate: bool  # set before open(): upgrade an older schema instead of refusing it
    target: int | None  # set before open(): stop at this schema version (tests)
    found_version: int  # after open(): the schema version the database had (0: a new one)
    version: int  # after open(): the schema version it has now

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def commit(self, decisions: Sequence[Decision]) -> None:
        """Write every change of every decision in one transaction, in order (later wins)."""

    async def save_workflow(self, name: str, digest: str, spec: dict[str, Any]) -> WorkflowRecord:
        """Return the latest version if its digest matches, else store the next version."""

    async def get_workflow(
        self, name: str, version: int | None = None
    ) -> WorkflowRecord | None: ...

    async def list_workflows(self) -> list[WorkflowRecord]:
        """The latest version of each workflow, by name."""

    async def keep_event(self, event: KeptEvent) -> None:
        """Keep an event nobody listened for (and drop the expired ones)."""

    async def kept_events(self, type: str, key: str, now: float) -> list[KeptEvent]:
        """Unexpired kept events of that type and key, oldest first. A decision that delivers one
        lists its id in `consumed_events`, and the commit deletes it with the step it completed."""

    async def secret(self, name: str) -> str:
        """A random secret kept with the data, made on first use; every process sharing the store
        reads the same one (callback tokens are signed with it, so they outlive restarts)."""

    async def list_workflow_versions(self, name: str) -> list[WorkflowRecord]:
        """Every version of one workflow, oldest first (empty when there is no such workflow)."""

    async def put_service(self, service: Service) -> None: ...

    async def delete_service(self, name: str) -> bool: ...

    async def list_services(self) -> list[Service]: ...

    async def load_active_runs(self) -> list[RunState]:
        """Runs not yet ended, with their steps: what a restarted engine resumes."""

    async def get_run(self, run_id: str) -> RunState | None: ...

    async def get_attempts(self, run_id: str) -> list[Attempt]: ...

    async def list_runs(
        self,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[RunInfo]:
        """Newest first; `before` is the id of the last run of the previous page."""


def open_store(url: str, *, migrate: bool = False) -> Store:
    store = _store_for(url)
    store.migrate = migrate
    return store


def _store_for(url: str) -> Store:
    """`sqlite:///relative.db`, `sqlite:////absolute.db`, a bare file path, or `postgresql://...`."""
    if url.startswith("sqlite:") or "://" not in url:
        from legato.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    scheme = url.split("://", 1)[0]
    if scheme in ("postgresql", "postgres"):
        from legato.store.postgres import PostgresStore

        return PostgresStore(url)
    raise LegatoError(
        f"unsupported database URL scheme {scheme!r}: use sqlite:///path.db or postgresql://..."
    )
