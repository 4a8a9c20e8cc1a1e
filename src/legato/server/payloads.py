"""What the API answers: runs, steps, workflows and services as plain JSON-ready dicts.

Times are ISO 8601 in UTC with milliseconds, so a person can read them and every language can parse them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from legato.engine.state import Attempt, RunInfo, RunState, StepState
from legato.masking import mask_definition, mask_error, mask_output, mask_request
from legato.model.workflow import MapOver, Workflow
from legato.store.protocol import WorkflowRecord


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError):  # past year 9999: show the number rather than fail
        return str(ts)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_summary(info: RunInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "workflow": info.workflow,
        "version": info.version,
        "status": info.status,
        "created_at": iso(info.created_at),
        "started_at": iso(info.started_at),
        "finished_at": iso(info.finished_at),
        "error": mask_error(info.error),
    }


def _attempt(a: Attempt) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "status": a.status,
        "started_at": iso(a.started_at),
        "finished_at": iso(a.finished_at),
        "request": mask_request(a.request),
        "output": mask_output(a.output),
        "error": mask_error(a.error),
    }


def _step(step: StepState, kind: str, history: list[Attempt]) -> dict[str, Any]:
    return {
        "name": step.name,
        "kind": kind,
        "status": step.status,
        "attempt": step.attempt,
        "started_at": iso(step.started_at),
        "finished_at": iso(step.finished_at),
        "next_attempt_at": iso(step.next_at),
        "request": mask_request(step.request),
        "output": mask_output(step.output),
        "error": mask_error(step.error),
        "reason": step.reason,
        "attempts": [_attempt(a) for a in history],
    }


def _kind(wf: Workflow | None, name: str) -> str:
    """A step's kind; a map's child (`name[3]`) has the kind of the call the map makes."""
    if wf is None:
        return "unknown"
    step = wf.steps.get(name)
    if step is not None:
        return step.kind
    parent = wf.steps.get(name.split("[", 1)[0])
    if parent is not None and isinstance(parent.action, MapOver):
        return parent.action.action.kind
    return "unknown"


def run_detail(state: RunState, wf: Workflow | None, attempts: list[Attempt]) -> dict[str, Any]:
    """The whole run: every step of its workflow version (untouched ones as pending), then the
    children a map step made, each with its attempts."""
    info = state.info
    by_step: dict[str, list[Attempt]] = {}
    for a in attempts:
        by_step.setdefault(a.step, []).append(a)
    steps: list[dict[str, Any]] = []
    names = list(wf.steps) if wf is not None else []
    names += [n for n in state.steps if wf is None or n not in wf.steps]
    for name in names:
        steps.append(_step(state.step(name), _kind(wf, name), by_step.get(name, [])))
    out = run_summary(info)
    out.update(
        input=info.input,
        output=info.output,
        deadline=iso(info.deadline),
        steps=steps,
    )
    return out


def workflow_summary(record: WorkflowRecord) -> dict[str, Any]:
    spec = record.spec
    return {
        "name": record.name,
        "version": record.version,
        "created_at": iso(record.created_at),
        "description": spec.get("description", ""),
        "steps": len(spec.get("steps", {})),
    }


def workflow_detail(record: WorkflowRecord, versions: list[WorkflowRecord]) -> dict[str, Any]:
    out = workflow_summary(record)
    out["digest"] = record.digest
    out["definition"] = mask_definition(record.spec)
    out["triggers"] = out["definition"].get("triggers") or []  # the broker messages that start runs
    if versions:
        out["versions"] = [
            {"version": v.version, "created_at": iso(v.created_at), "digest": v.digest}
            for v in versions
        ]
    return out
