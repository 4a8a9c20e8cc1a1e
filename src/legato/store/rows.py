"""Rows as every backend writes and reads them: the columns, a batch of decisions as row tuples, and
rows back into RunInfo, StepState and WorkflowRecord. One definition, so backends cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from legato.engine.state import ACTIVE_RUN, WAITING, Decision, RunInfo, StepState
from legato.store import step_logs
from legato.store.jsontext import dump_json
from legato.store.protocol import WorkflowRecord

RUN_COLUMNS = (
    "id, workflow, version, status, input, output, error, created_at, started_at, "
    "finished_at, deadline, parent"
)
STEP_COLUMNS = (
    "name, status, attempt, tries, started_at, finished_at, next_at, request, output, error, reason"
)
EVENT_COLUMNS = "id, type, key, data, created_at, expires_at"
Row = tuple[Any, ...]

dump = dump_json


def load(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def listen_key(type: str, key: str) -> str:
    """The indexed correlation of a step waiting for an event (JSON: no two pairs share it)."""
    return dump([type, key]) or ""


def _listens(s: StepState) -> str | None:
    if s.status != WAITING or s.reason != "event" or not isinstance(s.request, dict):
        return None
    return listen_key(s.request["event"], s.request["key"])


class BatchRows:
    """A batch of decisions as rows: a later change to the same run or step replaces an earlier
    one, so a batch writes each row once.

    A run row ends with its claim columns (owner, lease_until, wake_at), which only an insert
    writes: a new run is held by this engine, or (an API-only engine, `owner` None) left to any
    worker at once, as a run held by nobody ("") whose lease ran out when it was made. An update
    writes the others, and lets go of a run that ended."""

    def __init__(
        self, decisions: Sequence[Decision], owner: str | None, lease_until: float
    ) -> None:
        self.decisions, self.owner, self.lease_until = decisions, owner, lease_until
        runs, self.steps, self.attempts = decision_rows(decisions)
        self.runs = [
            (*r, owner or "", lease_until if owner else r[7], None)  # r[7]: created_at
            if r[3] in ACTIVE_RUN
            else (*r, None, None, None)
            for r in runs
        ]
        self.inbox_done = [(i,) for d in decisions for i in d.consumed_inbox]
        self.deliveries = [(x.run_id, dump(x.event)) for d in decisions for x in d.deliveries]
        # Notifications the batch causes (engine/outbox.py): the backend adds next_at, created_at.
        self.outbox = [
            (o.delivery_id, o.run_id, o.event, o.channel, o.target, dump(o.payload))
            for d in decisions
            for o in d.outbox
        ]
        # Lines attempts logged (store/step_logs.py): the backend adds created_at.
        self.logs = [
            (g.run_id, g.step, g.attempt, step_logs.encode(g.lines), len(g.lines))
            for d in decisions
            for g in d.logs
        ]
        # Released with their next due time: runs that only wait (an ended run's own update
        # releases it).
        self.releases: dict[str, float | None] = {}
        for d in decisions:
            if d.release:
                self.releases[d.run_id] = d.wake_at
            elif d.run is not None and not d.run.done:
                self.releases.pop(d.run_id, None)
        self.ended = [d.run_id for d in decisions if d.run is not None and d.run.done]
        self.existing = sorted({d.run_id for d in decisions if not d.new_run and d.writes})
        self.empty = not any(d.writes for d in decisions)
        self.fresh = owner is None and any(d.new_run for d in decisions)

    def only(self, lost: set[str]) -> BatchRows:
        """The same batch without the decisions of runs this engine lost: none of their rows, nor
        the inbox rows or kept events they used up, nor what they deliver to other runs."""
        if not lost:
            return self
        kept = [d for d in self.decisions if d.run_id not in lost]
        return BatchRows(kept, self.owner, self.lease_until)

    def notice(self, now: float) -> dict[str, Any]:
        """What other engines should hear of this batch (see Store.on_notice)."""
        notice: dict[str, Any] = {}
        if self.deliveries:
            notice["i"] = sorted({run for run, _ in self.deliveries})
        if self.ended:
            notice["e"] = self.ended
        wakes = [w for w in self.releases.values() if w is not None]
        if self.fresh:
            wakes.append(now)  # new runs for the workers
        if wakes or self.deliveries:
            notice["w"] = min(wakes, default=now)
        return notice


def decision_rows(decisions: Sequence[Decision]) -> tuple[list[Row], list[Row], list[Row]]:
    """Runs, steps and attempts of a batch."""
    runs: dict[str, Row] = {}
    steps: dict[tuple[str, str], Row] = {}
    attempts: list[Row] = []
    for d in decisions:
        if d.run is not None:
            r = d.run
            runs[r.id] = (
                r.id,
                r.workflow,
                r.version,
                r.status,
                dump(r.input),
                dump(r.output),
                dump(r.error),
                r.created_at,
                r.started_at,
                r.finished_at,
                r.deadline,
                dump(list(r.parent)) if r.parent else None,
            )
        for s in d.steps.values():
            steps[(d.run_id, s.name)] = (
                d.run_id,
                s.name,
                s.status,
                s.attempt,
                s.tries,
                s.started_at,
                s.finished_at,
                s.next_at,
                dump(s.request),
                dump(s.output),
                dump(s.error),
                s.reason,
                _listens(s),
            )
        for a in d.attempts:
            attempts.append(
                (
                    a.run_id,
                    a.step,
                    a.attempt,
                    a.status,
                    a.started_at,
                    a.finished_at,
                    dump(a.request),
                    dump(a.output),
                    dump(a.error),
                )
            )
    return list(runs.values()), list(steps.values()), attempts


def workflow_record(r: Row) -> WorkflowRecord:
    return WorkflowRecord(r[0], r[1], r[2], orjson.loads(r[3]), r[4])


def run_info(r: Row) -> RunInfo:
    return RunInfo(
        id=r[0],
        workflow=r[1],
        version=r[2],
        status=r[3],
        input=orjson.loads(r[4]),
        output=load(r[5]),
        error=load(r[6]),
        created_at=r[7],
        started_at=r[8],
        finished_at=r[9],
        deadline=r[10],
        parent=tuple(orjson.loads(r[11])) if r[11] else None,
    )


def step_state(r: Row) -> StepState:
    return StepState(
        name=r[0],
        status=r[1],
        attempt=r[2],
        tries=r[3],
        started_at=r[4],
        finished_at=r[5],
        next_at=r[6],
        request=load(r[7]),
        output=load(r[8]),
        error=load(r[9]),
        reason=r[10],
    )
