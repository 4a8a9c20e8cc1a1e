"""Rows as every backend writes and reads them: the columns, a batch of decisions as row tuples, and
rows back into RunInfo, StepState and WorkflowRecord. One definition, so backends cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from legato.engine.state import Decision, RunInfo, StepState
from legato.store.jsontext import dump_json
from legato.store.protocol import WorkflowRecord

RUN_COLUMNS = (
    "id, workflow, version, status, input, output, error, created_at, started_at, "
    "finished_at, deadline"
)
STEP_COLUMNS = (
    "name, status, attempt, tries, started_at, finished_at, next_at, request, output, error, reason"
)
Row = tuple[Any, ...]

dump = dump_json


def load(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def decision_rows(
    decisions: Sequence[Decision],
) -> tuple[list[Row], list[Row], list[Row], list[tuple[str]]]:
    """Runs, steps, attempts and consumed event ids of a batch; a later change to the same run or
    step replaces an earlier one, so a batch writes each row once."""
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
    consumed = [(e,) for d in decisions for e in d.consumed_events]
    return list(runs.values()), list(steps.values()), attempts, consumed


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
