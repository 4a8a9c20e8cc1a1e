"""The UI's graph layout: layers follow dependencies, boxes never overlap, long edges bend around
steps, and crossings are reduced; fast enough for a page of 100+ steps."""

from __future__ import annotations

import itertools
import time
from typing import Any

from legato.model.build import build_workflow
from legato.ui.layout import NODE_H, Edge, Layout, layers_of, layout
from legato.ui.view import graph_layout


def _no_overlap(out: Layout) -> None:
    boxes = sorted(out.nodes, key=lambda p: (p.y, p.x))
    for a, b in itertools.pairwise(boxes):
        if a.y == b.y:
            assert a.x + a.w <= b.x, (a, b)
    for p in out.nodes:
        assert p.x >= 0 and p.y >= 0
        assert p.x + p.w <= out.width and p.y + p.h <= out.height


def test_layers_are_longest_paths() -> None:
    edges = [Edge("a", "b"), Edge("b", "c"), Edge("a", "c"), Edge("a", "d")]
    assert layers_of(["a", "b", "c", "d"], edges) == {"a": 0, "b": 1, "c": 2, "d": 1}


def test_an_edge_that_skips_a_layer_bends_through_a_dummy_point() -> None:
    out = layout(["a", "b", "c"], [Edge("a", "b"), Edge("b", "c"), Edge("a", "c")])
    by_id = {p.id: p for p in out.nodes}
    assert [by_id[n].layer for n in "abc"] == [0, 1, 2]
    long = next(e for e in out.edges if (e.source, e.target) == ("a", "c"))
    assert len(long.points) == 3  # out of a, past b's layer, into c
    middle_x = long.points[1][0]
    b = by_id["b"]
    assert not b.x <= middle_x <= b.x + b.w  # it goes beside b, not through it
    assert long.points[0][1] == by_id["a"].y + NODE_H and long.points[-1][1] == by_id["c"].y
    assert long.path().startswith("M") and long.path().count("C") == 2
    _no_overlap(out)


def test_barycenter_ordering_removes_avoidable_crossings() -> None:
    # a1 feeds b2 and a2 feeds b1: in input order the edges cross; a layout need not.
    nodes = ["a1", "a2", "b1", "b2"]
    out = layout(nodes, [Edge("a1", "b2"), Edge("a2", "b1")])
    assert out.crossings == 0
    x = {p.id: p.x for p in out.nodes}
    assert (x["a1"] < x["a2"]) == (x["b2"] < x["b1"])


def test_fan_out_and_join_keep_the_join_under_its_branches() -> None:
    nodes = ["start", *(f"s{i}" for i in range(6)), "join"]
    edges = [Edge("start", f"s{i}") for i in range(6)] + [Edge(f"s{i}", "join") for i in range(6)]
    out = layout(nodes, edges)
    by_id = {p.id: p for p in out.nodes}
    xs = [by_id[f"s{i}"].cx for i in range(6)]
    assert min(xs) < by_id["join"].cx < max(xs)
    assert abs(by_id["start"].cx - by_id["join"].cx) < 1
    _no_overlap(out)


def test_empty_graph() -> None:
    out = layout([], [])
    assert out.nodes == [] and out.width > 0


def _chain(n: int) -> Any:
    steps: dict[str, object] = {}
    for i in range(n):
        deps = [f"s{j}" for j in (i - 1, i - 3, i - 7) if j >= 0 and i % 5 != 0]
        steps[f"s{i}"] = {"depends_on": deps, "http": {"url": f"http://h/{i}"}}
    return build_workflow({"name": "big", "steps": steps})


def _fastest(wf: Any) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        graph_layout(wf)
        times.append(time.perf_counter() - started)
    return min(times)


def test_a_hundred_step_workflow_lays_out_quickly_and_cleanly() -> None:
    """Speed as a ratio measured in the same process (the machine is shared): four times the steps
    may cost about their square (16 times; 12 measured), with room for noise, not a cube (64)."""
    small, big = _chain(25), _chain(100)
    out = graph_layout(big)
    assert len(out.nodes) == 100
    _no_overlap(out)
    ratio = _fastest(big) / max(_fastest(small), 1e-6)
    assert ratio < 32, ratio


def test_every_edge_stays_inside_the_drawing() -> None:
    """A long edge bends around the steps it skips: the drawing is wide enough for its bends."""
    nodes = ["route", *(f"t{i}" for i in range(5)), "other", "join", "after"]
    edges = [Edge("route", t, "branch", "c") for t in nodes[1:7]]
    edges += [Edge(t, "join") for t in nodes[1:7]]
    edges += [Edge("join", "after"), Edge("route", "after")]
    drawn = layout(nodes, edges)
    for e in drawn.edges:
        assert all(0 <= x <= drawn.width for x, _ in e.points), (e.source, e.target)
