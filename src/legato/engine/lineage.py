"""Run trees: how deep and how wide sub-workflows may go, and what a cancel or retry reaches.

A sub-workflow run knows its root run and its depth (the store keeps both, with a count of each root's
descendants), so a workflow that starts itself, directly or through others, stops at a limit instead
of filling the database. A cancel reaches a run's whole tree in one transaction of the store (not one
run at a time), and bulk actions pick runs by a filter.
"""

from __future__ import annotations

from dataclasses import dataclass

from legato.errors import LegatoError

DEFAULT_MAX_DEPTH = 16
DEFAULT_MAX_DESCENDANTS = 10_000
MAX_MAX_DEPTH = 1000  # the highest max_depth allowed: deeper trees are a mistake, not a design
INT32_MAX = 2**31 - 1  # counts and depths are 32-bit integers in the store

# What a store's `start_child` answers.
STARTED = "started"
EXISTS = "exists"  # started before (a re-issued StartChild): nothing changes
GONE = "gone"  # its parent ended (or is no more) meanwhile: nothing starts
MAX_DEPTH = "max_depth"
MAX_DESCENDANTS = "max_descendants"


@dataclass(frozen=True, slots=True)
class RunLimits:
    """`max_depth`: sub-workflow levels under a root run (its children are at depth 1).
    `max_descendants`: runs started under one root run, at every depth, over its whole life (retries
    included)."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_descendants: int = DEFAULT_MAX_DESCENDANTS

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_descendants"):
            value = getattr(self, name)
            top = MAX_MAX_DEPTH if name == "max_depth" else INT32_MAX
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer from 1 to {top}, not {value!r}")

    def refusal(self, outcome: str, root: str) -> str:
        """The message of a step that passed a limit: it names the limit."""
        if outcome == MAX_DEPTH:
            return f"sub-workflow depth {self.max_depth} reached (limit max_depth)"
        return (
            f"{self.max_descendants} descendant runs of root run {root} reached "
            "(limit max_descendants)"
        )


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a bulk action starts from (every field given must match). `ids` and `parent` (the
    children of a run) are for the engine itself; `workflows` are a tag's. An empty filter matches
    nothing unless `everything` is set: a cancel of every run must be asked for explicitly."""

    ids: tuple[str, ...] | None = None
    parent: str | None = None
    workflow: str | None = None
    workflows: tuple[str, ...] | None = None
    status: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    everything: bool = False

    @property
    def empty(self) -> bool:
        return (
            self.ids is None
            and self.parent is None
            and self.workflow is None
            and self.workflows is None
            and self.status is None
            and self.created_after is None
            and self.created_before is None
        )


def where(f: RunFilter, postgres: bool) -> tuple[str, list[object]]:
    """The filter as a SQL condition on `runs` and its parameters (`?` for SQLite, `$n` for
    PostgreSQL). An empty filter without `everything` matches nothing."""
    clauses: list[str] = []
    params: list[object] = []

    def mark(value: object) -> str:
        params.append(value)
        return f"${len(params)}" if postgres else "?"

    def one_of(column: str, values: tuple[str, ...]) -> str:
        if not values:
            return "1 = 0"
        if postgres:
            return f"{column} = ANY({mark(list(values))}::text[])"
        return f"{column} IN ({', '.join(mark(v) for v in values)})"

    if f.ids is not None:
        clauses.append(one_of("id", f.ids))
    if f.parent is not None:
        clauses.append(f"parent_id = {mark(f.parent)}")
    if f.workflow is not None:
        clauses.append(f"workflow = {mark(f.workflow)}")
    if f.workflows is not None:
        clauses.append(one_of("workflow", f.workflows))
    if f.status is not None:
        clauses.append(f"status = {mark(f.status)}")
    if f.created_after is not None:
        clauses.append(f"created_at >= {mark(f.created_after)}")
    if f.created_before is not None:
        clauses.append(f"created_at < {mark(f.created_before)}")
    if not clauses:
        clauses.append("1 = 1" if f.everything else "1 = 0")
    return " AND ".join(clauses), params


class LimitReached(LegatoError):
    """A sub-workflow run was not started: it would pass one of the engine's RunLimits."""
