"""The Store protocol: everything the engine keeps, behind one small async interface.

The engine hands the store whole Decisions; a backend commits a batch of them in one transaction (group
commit), so durability costs one commit per batch, not one per step transition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from legato.engine.lineage import RunFilter, RunLimits
from legato.engine.state import Attempt, Decision, RunInfo, RunState
from legato.errors import LegatoError
from legato.model.service import Service
from legato.store.access import AuditRow, SessionRow

if TYPE_CHECKING:
    from legato.engine.outcome import LogLine
    from legato.store.receipts import Receipt, Received
    from legato.store.starts import StartKey, StartOutcome
    from legato.store.step_logs import LogChunk


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    name: str
    version: int
    digest: str
    spec: dict[str, Any]
    created_at: float
    created: bool = False  # True when save_workflow made this version just now
    warnings: tuple[str, ...] = ()  # what registration could not check (not stored)


@dataclass(frozen=True, slots=True)
class KeptEvent:
    """An event that arrived when no step was listening for it, kept until `expires_at`."""

    id: str
    type: str
    key: str
    data: Any
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class InboxRow:
    """An event waiting in a run's inbox (see engine/inbox.py)."""

    id: int
    run_id: str
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A run an engine has just claimed, with its pending inbox. `taken_over`: another engine held it
    (it died, or on SQLite it was this file's previous process), so effects it may not have carried
    out are re-issued."""

    state: RunState
    inbox: list[InboxRow]
    taken_over: bool


@dataclass(frozen=True, slots=True)
class Target:
    """What a delivery found: the run's status and owner, and the step it named (if any) as
    (status, attempt, reason)."""

    run_status: str
    owner: str | None
    step: tuple[str, int, str | None] | None = None


# Decides, inside the delivering transaction, whether the target accepts the event.
Accept = Callable[[Target], bool]


@dataclass(slots=True)
class Delivered:
    """The outcome of `Store.deliver`: `target` is None when there is no such run; `ok` is False
    when `accept` refused it or when an undelivered event with the same `dedupe` key is pending."""

    ok: bool
    target: Target | None = None
    duplicate: bool = False
    runs: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Committed:
    """What a commit tells the engine: the runs it no longer owns (their lease expired and another
    engine claimed them; their decisions were not written), and whether a run it released is due
    at once (something reached its inbox while it was held)."""

    lost: frozenset[str] = frozenset()
    due: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """Where a scheduled workflow stands: the start of the next interval to run (None: its
    schedule ended), and whether it is paused. The calendar itself is in the workflow's definition."""

    workflow: str
    next_start: float | None
    paused: bool
    updated_at: float


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """One notification sent (or given up on) about a run: `ok` False keeps its last error."""

    run_id: str
    event: str
    channel: str  # "email" or "webhook"
    target: str  # the addresses, or the webhook's URL
    ok: bool
    tries: int
    error: str | None
    created_at: float
    delivery_id: str | None = None  # the outbox row's (the `Legato-Delivery` header)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A notification claimed from the outbox: `attempts` counts this try (a try cut short by a
    crash counts too); `error` is the previous try's."""

    id: int
    delivery_id: str
    run_id: str
    event: str
    channel: str
    target: str
    payload: dict[str, Any]
    attempts: int
    error: str | None
    created_at: float


class Store(Protocol):
    url: str
    # Set by the engine before open(). `owner`: the engine's id, or None for an engine that runs no
    # steps (an API-only server), whose new runs are left for a worker to claim. `lease`: how long
    # a claim lasts unless renewed.
    owner: str | None
    lease: float
    # True when several engines may share the store (PostgreSQL): claims expire with their lease.
    # False for SQLite, one engine per file: a run another owner holds is a dead process's, and is
    # claimed at once.
    shared: bool
    migrate: bool  # set before open(): upgrade an older schema instead of refusing it
    target: int | None  # set before open(): stop at this schema version (tests)
    found_version: int  # after open(): the schema version the database had (0: a new one)
    version: int  # after open(): the schema version it has now

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def probe(self) -> None:
        """Write a tiny row and read it back, committed: the readiness check (engine/health.py)."""

    async def commit(self, decisions: Sequence[Decision]) -> Committed:
        """Write every change of every decision in one transaction, in order (later wins): with
        them the inbox rows they used up, their deliveries and releases."""

    async def claim(self, now: float, limit: int) -> list[Claimed]:
        """Claim up to `limit` runs that have something due (a timer, an inbox row, a new run an
        API-only server started) or whose owner's lease expired, for `lease` seconds."""

    async def renew(self, now: float, run_ids: Sequence[str]) -> int:
        """Extend the lease of these runs, those this engine holds (a run it claimed but does not
        hold is left to expire); returns how many it still owns."""

    async def hand_back(self, run_ids: Sequence[str], after: float) -> None:
        """Give up runs this engine claimed but could not take in hand: any engine claims them
        again from `after`, and resumes each in full."""

    async def release_all(self, now: float) -> None:
        """Let go of every run this engine owns (a clean stop): others claim them at once, and
        resume each in full, as after a crash (what a draining engine skipped is issued again)."""

    async def next_wake(self) -> float | None:
        """The earliest time a claim could find something: a parked run's wake time, or (shared
        stores) another engine's lease running out."""

    async def inbox(self, run_ids: Sequence[str]) -> list[InboxRow]:
        """Pending inbox rows of these runs, oldest first."""

    async def deliver(
        self,
        run_id: str,
        event: dict[str, Any],
        now: float,
        *,
        step: str | None = None,
        accept: Accept | None = None,
        dedupe: str | None = None,
    ) -> Delivered:
        """Put an event in a run's inbox, in one transaction with the check `accept` makes of the
        run as stored (and of `step`, if named); the run becomes due at once."""

    async def publish(
        self,
        type: str,
        key: str,
        now: float,
        make: Callable[[str, int], dict[str, Any]],
        keep: KeptEvent | None,
    ) -> list[str]:
        """Deliver `make(step, attempt)` to every step waiting for this event type and key, in one
        transaction; when none is, keep the event (if `keep` is given). Returns the runs reached."""

    async def take_kept(
        self,
        type: str,
        key: str,
        now: float,
        run_id: str,
        step: str,
        make: Callable[[KeptEvent], dict[str, Any]],
    ) -> bool:
        """Move the oldest unexpired kept event of this type and key into the run's inbox, for
        `step`, which stops listening in the store (it takes one event)."""

    async def listen(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener` with what other engines sharing the store report: runs with new inbox
        rows (`i`), runs that ended (`e`), the earliest new wake time (`w`), a service put or deleted
        (`d`). No-op unless shared."""

    async def keep_listening(self) -> bool:
        """Listen again if the connection that hears notices was lost; True when it was (what
        was said meanwhile is lost: the caller catches up by looking)."""

    async def save_workflow(self, name: str, digest: str, spec: dict[str, Any]) -> WorkflowRecord:
        """Return the latest version if its digest matches, else store the next version."""

    async def get_workflow(
        self, name: str, version: int | None = None
    ) -> WorkflowRecord | None: ...

    async def latest_version(self, name: str) -> int | None:
        """The number of a workflow's latest version (None: no such workflow)."""

    async def list_workflows(self) -> list[WorkflowRecord]:
        """The latest version of each workflow, by name."""

    async def secret(self, name: str) -> str:
        """A random secret kept with the data, made on first use; every process sharing the store
        reads the same one (callback tokens are signed with it, so they outlive restarts)."""

    async def list_workflow_versions(self, name: str) -> list[WorkflowRecord]:
        """Every version of one workflow, oldest first (empty when there is no such workflow)."""

    async def put_service(self, service: Service) -> None: ...

    async def delete_service(self, name: str) -> bool: ...

    async def list_services(self) -> list[Service]: ...

    # Secrets that templates read as `{{ secrets.NAME }}` (table `secrets`): write-only through the
    # API; only the HTTP executor reads a value. Not `secret()` above, the store's own signing keys.
    async def put_user_secret(self, name: str, value: str) -> None: ...

    async def delete_user_secret(self, name: str) -> bool: ...

    async def get_user_secret(self, name: str) -> str | None: ...

    async def list_user_secrets(self) -> list[tuple[str, float]]:
        """(name, updated_at) of every stored secret, by name; never a value."""

    async def get_run(self, run_id: str) -> RunState | None: ...

    async def run_status(self, run_id: str) -> str | None:
        """The run's status alone (None: no such run): what a wait looks at."""

    async def get_attempts(self, run_id: str) -> list[Attempt]: ...

    async def append_logs(
        self, run_id: str, step: str, attempt: int, lines: Sequence[LogLine], now: float
    ) -> bool:
        """Add lines a service sent for an attempt (its callback), in one row of their own; False
        (only a mark, the first time) when the attempt has step_logs.MAX_CHUNKS rows already. An attempt's
        captured output is written with its outcome instead (Decision.logs)."""

    async def get_logs(
        self,
        run_id: str,
        step: str | None = None,
        attempt: int | None = None,
        after: int = 0,
        limit: int = 200,
    ) -> list[LogChunk]:
        """A run's log rows (of one step, of one attempt) whose id is above `after`, in order."""

    async def list_runs(
        self,
        workflow: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before: str | None = None,
        workflows: Sequence[str] | None = None,
    ) -> list[RunInfo]:
        """Newest first; `before` is the id of the last run of the previous page; `workflows`,
        when given, are the only workflows whose runs are wanted (a tag's)."""

    async def add_schedule(self, workflow: str, first: float | None, now: float) -> None:
        """Keep a scheduled workflow's row, made with `first` unless it exists (a new version of
        a workflow neither reruns nor skips intervals)."""

    async def move_schedule(self, workflow: str, next_start: float | None, now: float) -> None:
        """Set where a schedule stands (a new version's calendar), paused or not as it was."""

    async def drop_schedule(self, workflow: str) -> None: ...

    async def list_schedules(self) -> list[ScheduleRow]: ...

    async def pause_schedule(self, workflow: str, paused: bool, now: float) -> bool:
        """False when the workflow has no schedule."""

    async def fire_schedule(
        self,
        workflow: str,
        expected: float,
        following: float | None,
        decision: Decision,
        max_active: int | None,
        now: float,
    ) -> str:
        """In one transaction holding the schedule's row: if its next interval still starts at
        `expected` and it is not paused, commit the interval's run (`decision`, a new run for any
        worker to claim; skipped if its id exists) and move the schedule on to `following`.
        Returns "fired", "taken" (moved on, but a run of another workflow has the interval's
        id: none was made), "moved" (another process fired it, or it was paused) or "busy"
        (`max_active` runs of the workflow are active: nothing changes)."""

    async def start_child(
        self, decision: Decision, parent: str, limits: RunLimits
    ) -> tuple[str, str]:
        """In one transaction: if the `parent` run has not ended and no limit stops it, commit the
        sub-workflow run's first decision (a new run held by nobody, for any worker to claim) with
        its parent, root and depth, and count it in its root's descendants. Returns one of
        engine/lineage.py's outcomes and the root run's id."""

    async def cancel_runs(
        self,
        runs: RunFilter,
        reason: str,
        now: float,
        report: Callable[[str, str, Any], dict[str, Any]],
    ) -> tuple[list[str], list[str]]:
        """In one transaction, set-wise: cancel the matched runs that have not ended and all their
        descendants that have not (their owner cleared, so engines holding them find them lost);
        the parent of a matched run, if it runs on, gets `report(run_id, workflow, parent)` in its
        inbox. Returns the runs cancelled and the parents told."""

    async def retry_runs(self, runs: RunFilter, event: dict[str, Any], now: float) -> list[str]:
        """Put `event` (a Retry) in the inbox of each matched failed or cancelled run, once;
        returns those runs."""

    async def not_owned(self, run_ids: Sequence[str]) -> list[str]:
        """The stored runs among these that this engine does not own (any more)."""

    async def start_once(
        self, decision: Decision, key: StartKey | None, now: float
    ) -> StartOutcome:
        """Commit `decision` (a new run, for any worker to claim) unless `key` (unexpired) names a
        run already or a run with its id exists: then that run, and nothing is written. The key is
        recorded in the run's transaction; concurrent starts with one key make one run."""

    async def start_triggered(self, decision: Decision, receipt: Receipt, now: float) -> Received:
        """Commit `decision` (a new run, for any worker to claim) with `receipt`, unless a run was
        started with that receipt's key before: then that run, and nothing is written."""

    async def purge_start_keys(self, now: float) -> int:
        """Delete the Idempotency-Keys expired by `now`; how many."""

    async def record_notification(self, row: NotificationRow) -> None: ...

    async def list_notifications(self, run_id: str) -> list[NotificationRow]:
        """A run's notifications, oldest first."""

    # Sessions and the audit log (legato.store.access).
    async def add_session(self, row: SessionRow) -> None:
        """Store a new UI session (and drop the expired ones)."""

    async def get_session(self, key: str) -> SessionRow | None: ...

    async def drop_session(self, key: str) -> None: ...

    async def add_audit(self, row: AuditRow) -> None: ...

    async def prune_audit(self, before: float, limit: int) -> int:
        """Delete up to `limit` of the oldest audit rows written before `before`; how many."""

    async def list_audit(
        self, since: float | None, token: str | None, before: int | None, limit: int
    ) -> list[AuditRow]:
        """Newest first, ids below `before`."""

    async def claim_outbox(
        self,
        claimant: str,
        now: float,
        limit: int,
        lease: float,
        per_target: int | None = None,
        held: Mapping[str, int] | None = None,
    ) -> list[OutboxItem]:
        """Claim up to `limit` outbox rows that are due (new, due again after a failed try, or
        whose claim's lease ran out; on SQLite also any another claimant holds: a dead
        process's) for `lease` seconds, counting a try for each (SKIP LOCKED on PostgreSQL).
        With `per_target`, at most that many per receiver (store/outbox_targets.py) less those
        `held` (by receiver) already in flight: rows of a receiver at its bound are skipped."""

    async def settle_outbox(
        self,
        item_id: int,
        claimant: str,
        *,
        retry_at: float | None = None,
        error: str | None = None,
        record: NotificationRow | None = None,
    ) -> bool:
        """What became of a claimed row, if `claimant` still holds it: with `record` it is done
        (delivered, or given up), leaves the outbox and `record` joins the notifications in one
        transaction; else it is due again at `retry_at`. False when another claimant holds it."""

    async def next_outbox(self, after: float | None = None) -> float | None:
        """When the earliest outbox row (due later than `after`, if given) is due (None: none)."""


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
