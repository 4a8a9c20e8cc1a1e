"""The graph view of a workflow: nodes in order, dependency edges, branch edges labelled."""

from __future__ import annotations

from legato.model.build import build_workflow
from legato.model.graph import workflow_graph


def test_nodes_edges_and_branch_labels() -> None:
    wf = build_workflow(
        {
            "name": "g",
            "steps": {
                "a": {"http": {"url": "http://h/a", "method": "GET"}},
                "b": {
                    "depends_on": "a",
                    "branch": {
                        "cases": [{"when": "{{ input.x }}", "then": ["c"]}],
                        "otherwise": ["d"],
                    },
                },
                "c": {"python": {"function": "json:dumps"}},
                "d": {"fail": "no"},
                "e": {
                    "depends_on": ["c", "d"],
                    "trigger": "one_succeeded",
                    "map": {"over": "{{ input.items }}", "step": {"http": {"service": "s"}}},
                },
            },
        }
    )
    graph = workflow_graph(wf)
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert [n["id"] for n in graph["nodes"]][:2] == ["a", "b"]
    assert nodes["a"]["target"] == "http://h/a" and nodes["a"]["method"] == "GET"
    assert nodes["c"] == {**nodes["c"], "kind": "python", "function": "json:dumps"}
    assert nodes["e"]["kind"] == "map" and nodes["e"]["service"] == "s"
    assert nodes["e"]["trigger"] == "one_succeeded"
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    assert edges[("a", "b")] == {"source": "a", "target": "b", "kind": "after"}
    assert edges[("b", "c")]["label"] == "{{ input.x }}"
    assert edges[("b", "d")]["label"] == "otherwise"
    assert {("c", "e"), ("d", "e")} <= set(edges)
    assert graph["roots"] == ["a"]
