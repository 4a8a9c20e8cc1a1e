"""The engine's side of run trees (see lineage.py): starting a sub-workflow run within the limits,
and cancelling or retrying runs set-wise in the store, then letting go of what this engine held."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import orjson

from legato.engine import inbox, lineage
from legato.engine.decider import decide
from legato.engine.lineage import LimitReached, RunFilter
from legato.engine.outbox import new_delivery_id, outgoing
from legato.engine.state import ACTIVE_RUN, CANCELLED, Cancel, Retry, RunInfo, Start
from legato.errors import Conflict, LegatoError, NotFound
from legato.store.faults import lasting

if TYPE_CHECKING:
    from legato.engine.runtime import Engine, _Active

log = logging.getLogger("legato.engine")


async def start_child(engine: Engine, active: _Active) -> None:
    """Commit a sub-workflow's new run in one transaction with its limits' check (Store.start_child):
    held by nobody, it is claimed at once like a scheduled run. LimitReached when a limit stops it;
    nothing happens when its parent has ended meanwhile."""
    from legato.engine.runtime import _broken, _child_report

    info = active.state.info
    assert info.parent is not None
    now = engine.clock()
    try:
        decision = decide(active.wf, active.state, Start(), now, random.random())
    except Exception as exc:  # a decider bug must end the run visibly, not strand it
        log.exception("deciding the start of run %s failed", info.id)
        decision = _broken(active.state, exc, now)
    decision.new_run = True
    decision.outbox = outgoing(active.wf.notify, decision, info, new_delivery_id)
    if decision.run is not None and decision.run.done:
        decision.deliveries.append(_child_report(decision.run))
    outcome, root = await engine.store.start_child(decision, info.parent[0], engine.limits)
    if outcome in (lineage.MAX_DEPTH, lineage.MAX_DESCENDANTS):
        raise LimitReached(engine.limits.refusal(outcome, root))
    if outcome == lineage.EXISTS:  # made since the engine looked: by its parent, or taken
        existing = await engine.store.get_run(info.id)
        if existing is not None:
            check_child(existing.info, info.parent[0], info.workflow)
    if outcome != lineage.STARTED:
        return
    for listener in engine._listeners:
        try:
            listener(decision)
        except Exception:
            log.exception("decision listener %r failed", listener)
    engine._arrived([d.run_id for d in decision.deliveries])
    if decision.outbox:
        engine.notifier.wake()
    engine._claim_soon()


class IdTaken(LegatoError):
    """A sub-workflow run's id is held by a run that is not that step's child."""


def check_child(existing: RunInfo, parent: str, workflow: str) -> None:
    """The run found under a sub-workflow step's child id must be that step's: else the parent
    would wait for a run that never reports to it (ids made before the reserved form existed could
    be chosen by a caller first)."""
    if (
        existing.parent is not None
        and existing.parent[0] == parent
        and existing.workflow == workflow
    ):
        return
    raise IdTaken(
        f"sub-workflow {workflow!r}: its run id {existing.id} is taken by a run of workflow "
        f"{existing.workflow!r} that is not this step's (started by a caller or another run)"
    )


def _reporter(reason: str) -> Callable[[str, str, Any], dict[str, Any]]:
    """What a cancelled sub-workflow run's parent finds in its inbox: the child's end."""
    from legato.engine.runtime import _child_done

    def report(run_id: str, workflow: str, parent: Any) -> dict[str, Any]:
        _, step, attempt = orjson.loads(parent) if isinstance(parent, str | bytes) else parent
        ended = RunInfo(
            run_id, workflow, 0, CANCELLED, {}, 0.0, error={"kind": "cancelled", "message": reason}
        )
        return inbox.encode(_child_done(step, attempt, ended))

    return report


async def cancel_runs(engine: Engine, runs: RunFilter, reason: str) -> list[str]:
    """In a request, bounded by BULK_TIMEOUT and never cut short (see faults.lasting)."""

    async def work() -> list[str]:
        ids, told = await engine.store.cancel_runs(runs, reason, engine.clock(), _reporter(reason))
        stopped(engine, ids)
        engine._arrived(told)
        return ids

    return await lasting(work())


async def cancel(engine: Engine, run_id: str, reason: str) -> None:
    """A run held here may be ahead of the store (a retry not yet committed): it is cancelled
    through its decider as before, then its descendants set-wise. Any other run is cancelled with
    its descendants in one transaction."""
    held = engine._runs.get(run_id)
    if held is not None and held.state.info.done:
        await engine.wait_ended(run_id, 10.0)  # its end is decided here: let it be committed
    elif held is not None:
        await engine._event(held, Cancel(reason))
        # Its end is committed: no child starts under it from now on (Store.start_child).
        await cancel_runs(engine, RunFilter(parent=run_id), f"its parent run {run_id} stopped")
        return
    if run_id in await cancel_runs(engine, RunFilter(ids=(run_id,)), reason):
        return
    status = await engine.store.run_status(run_id)
    if status is None:
        raise NotFound(f"no run with id {run_id!r}")
    raise Conflict(f"run {run_id} has already ended ({status})")


async def retry_runs(engine: Engine, runs: RunFilter) -> list[str]:
    """Like cancel_runs, bounded by BULK_TIMEOUT in a request."""

    async def work() -> list[str]:
        ids = await engine.store.retry_runs(runs, inbox.encode(Retry()), engine.clock())
        engine._arrived(ids)
        return ids

    return await lasting(work())


def stopped(
    engine: Engine, run_ids: Collection[str], only: dict[str, _Active] | None = None
) -> None:
    """These runs were cancelled in the store (by this engine or another): let go of those held
    here, stop what is under way for them, and tell whoever waits for their end. With `only`,
    a run is let go only if it is still that holding (not released and claimed again since)."""
    for run_id in run_ids:
        active = engine._runs.get(run_id)
        if active is not None and (only is None or only.get(run_id) is active):
            del engine._runs[run_id]
            engine._disarm(active)
            for task in active.tasks.values():
                task.cancel()
        if run_id in engine._waiters:
            engine._ended(run_id)


async def check_stopped(engine: Engine) -> None:
    """Another engine cancelled runs set-wise: let go of the runs held here that it took (the store
    no longer has this engine as their owner), and wake the waits it ended."""
    held = dict(engine._runs)
    if held:
        stopped(engine, await engine.store.not_owned(list(held)), held)
    for run_id in [r for r in engine._waiters if r not in engine._runs]:
        if await engine.store.run_status(run_id) not in ACTIVE_RUN:
            engine._ended(run_id)
