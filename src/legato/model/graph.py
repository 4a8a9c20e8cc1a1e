"""A workflow as nodes and edges: what the API's graph route and the UI draw.

Pure data from the model, so every view of a workflow (API, UI, CLI) shows the same dependencies, and
a branch's edges carry the condition that takes them.
"""

from __future__ import annotations

from typing import Any

from legato.masking import mask_url
from legato.model.workflow import (
    Branch,
    HttpCall,
    Listen,
    MapOver,
    PythonCall,
    Step,
    SubWorkflow,
    Workflow,
)


def _target(step: Step) -> dict[str, Any]:
    action = step.action
    if isinstance(action, MapOver):
        action = action.action
    if isinstance(action, HttpCall):
        url = action.url.source if action.url else None
        where = action.service or (mask_url(url) if isinstance(url, str) else url)
        return {"service": action.service, "method": action.method, "target": where}
    if isinstance(action, PythonCall):
        return {"function": action.function, "target": action.function}
    if isinstance(action, SubWorkflow):
        return {"workflow": action.name, "target": action.name}
    if isinstance(action, Listen):
        return {"event": action.event, "target": action.event}
    return {}


def _branch_labels(branch: Branch) -> dict[str, str]:
    labels: dict[str, str] = {}
    for when, then in branch.cases:
        for name in then:
            labels.setdefault(name, str(when.source))
    for name in branch.otherwise:
        labels.setdefault(name, "otherwise")
    return labels


def workflow_graph(wf: Workflow) -> dict[str, Any]:
    """Nodes in topological order; an edge from each dependency to its dependent step."""
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    labels = {
        name: _branch_labels(step.action)
        for name, step in wf.steps.items()
        if isinstance(step.action, Branch)
    }
    for name, step in wf.steps.items():
        node: dict[str, Any] = {
            "id": name,
            "kind": step.kind,
            "depends_on": list(step.depends_on),
            "trigger": step.trigger,
        }
        node.update(_target(step))
        if step.optional:
            node["optional"] = True
        if step.description:
            node["description"] = step.description
        nodes.append(node)
        for dep in step.depends_on:
            edge: dict[str, Any] = {"source": dep, "target": name, "kind": "after"}
            label = labels.get(dep, {}).get(name)
            if label is not None:
                edge["kind"] = "branch"
                edge["label"] = label
            edges.append(edge)
    return {"name": wf.name, "nodes": nodes, "edges": edges, "roots": list(wf.roots)}
