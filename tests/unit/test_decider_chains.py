"""Long chains of steps that end at once (`wait: 0s`, branches, skips) end in one decision: the decider
walks them with a loop, not recursion, so the longest chain a definition may have (2,000 steps) does
not overflow Python's stack (it did from ~200 steps)."""

from __future__ import annotations

import sys
from typing import Any

from legato.engine.state import Retry
from legato.model.limits import DEFAULT_MAX_STEPS
from tests.unit.decider_support import Run, build, executed, http

N = DEFAULT_MAX_STEPS


def chain(step: Any, n: int = N) -> dict[str, Any]:
    steps = {}
    for i in range(n):
        s = dict(step(i))
        if i:
            s["depends_on"] = f"s{i - 1}"
        steps[f"s{i}"] = s
    return steps


def test_a_chain_of_the_most_instant_steps_succeeds_in_one_decision() -> None:
    assert sys.getrecursionlimit() < N * 3  # the old recursion took ~5 frames a step
    run = Run(build(chain(lambda i: {"wait": "0s"})))
    d = run.start()
    assert run.run_status == "succeeded" and len(d.steps) == N
    assert all(s.status == "succeeded" for s in run.state.steps.values())
    assert run.state.info.output == {f"s{N - 1}": run.step(f"s{N - 1}").output}


def test_a_chain_of_branches_each_taking_the_next_succeeds_in_one_decision() -> None:
    def branch(i: int) -> dict[str, Any]:
        if i == N - 1:
            return {"wait": "0s"}
        return {"branch": {"cases": [{"when": "{{ input.go }}", "then": f"s{i + 1}"}]}}

    run = Run(build(chain(branch), inputs=[{"name": "go", "type": "boolean"}]), {"go": True})
    run.start()
    assert run.run_status == "succeeded"
    assert run.step(f"s{N - 1}").status == "succeeded"


def test_a_failure_skips_a_chain_of_the_most_steps_in_one_decision() -> None:
    steps = chain(lambda i: http() if i == 0 else {"wait": "0s"})
    run = Run(build(steps))
    assert executed(run.start()) == ["s0"]
    d = run.fail("s0", "4xx")
    assert run.run_status == "failed" and len(d.steps) == N
    assert run.step("s1").reason == "upstream_failed"
    assert {run.step(f"s{i}").reason for i in range(2, N)} == {"upstream_skipped"}


def test_a_chain_after_an_answer_runs_on_to_the_next_call() -> None:
    """Instant steps between two calls: the first call's answer dispatches the second at once."""
    steps = chain(lambda i: http() if i in (0, N - 1) else {"wait": "0s"})
    run = Run(build(steps))
    run.start()
    assert executed(run.ok("s0")) == [f"s{N - 1}"]
    run.ok(f"s{N - 1}")
    assert run.run_status == "succeeded"


def test_a_retried_run_walks_the_chain_again() -> None:
    steps = chain(lambda i: http() if i == 0 else {"wait": "0s"})
    run = Run(build(steps))
    run.start()
    run.fail("s0", "4xx")
    run.send(Retry())
    run.ok("s0")
    assert run.run_status == "succeeded"
