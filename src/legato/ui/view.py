"""What the templates draw: a workflow's laid-out graph with each node's kind and target, and small
formatting helpers. Pure functions of the model, so they are unit-tested without a server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from legato.masking import mask_text
from legato.model.graph import workflow_graph
from legato.model.workflow import Workflow
from legato.server.payloads import iso
from legato.store.step_logs import LogChunk
from legato.ui.layout import Edge, Layout, Placed, layout


@dataclass
class NodeView:
    box: Placed
    kind: str
    target: str
    optional: bool
    trigger: str
    description: str


@dataclass
class GraphView:
    layout: Layout
    nodes: list[NodeView]


def _label(text: str | None) -> str | None:
    """A branch condition without its template braces: `{{ x > 1 }}` reads as `x > 1`."""
    if text is None:
        return None
    stripped = text.strip()
    if stripped.startswith("{{") and stripped.endswith("}}"):
        stripped = stripped[2:-2].strip()
    return stripped


def graph_layout(wf: Workflow) -> Layout:
    graph = workflow_graph(wf)
    edges = [
        Edge(e["source"], e["target"], e["kind"], _label(e.get("label"))) for e in graph["edges"]
    ]
    return layout([n["id"] for n in graph["nodes"]], edges)


def graph_view(wf: Workflow) -> GraphView:
    graph = workflow_graph(wf)
    placed = graph_layout(wf)
    info = {n["id"]: n for n in graph["nodes"]}
    nodes = []
    for box in placed.nodes:
        node = info[box.id]
        nodes.append(
            NodeView(
                box,
                node["kind"],
                str(node.get("target") or ""),
                bool(node.get("optional")),
                node["trigger"],
                node.get("description", ""),
            )
        )
    return GraphView(placed, nodes)


def clip(text: str, size: int) -> str:
    """Text that fits a node: long names end in an ellipsis (the full text is in the tooltip)."""
    return text if len(text) <= size else text[: size - 1] + "\u2026"


def clip_middle(text: str, size: int) -> str:
    """Long conditions keep both ends (`steps.charge…status == 200`): their ends differ most."""
    if len(text) <= size:
        return text
    head = (size - 1) // 2
    return text[:head] + "\u2026" + text[len(text) - (size - 1 - head) :]


def took(start: float | None, end: float | None) -> str:
    """A run's or step's duration as a person reads it: `850 ms`, `12.3 s`, `4 min 5 s`, `2 h 3 min`."""
    if start is None or end is None:
        return ""
    seconds = max(0.0, end - start)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def script_json(value: Any) -> str:
    """JSON to embed in a <script type="application/json">: no `<`, so no `</script>` or `<!--`."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode().replace("<", "\\u003c")


def log_groups(chunks: Sequence[LogChunk]) -> list[dict[str, Any]]:
    """A run's log rows as the run page shows them: one group per step and attempt, in the order
    first written, each line as text (masked here; escaped by the template)."""
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    for c in chunks:
        group = groups.setdefault(
            (c.step, c.attempt),
            {"step": c.step, "attempt": c.attempt, "lines": [], "failed": False},
        )
        for ts, level, source, message in c.lines:
            group["lines"].append(f"{iso(ts)} {level:<7} {source}: {mask_text(message)}")
            group["failed"] = group["failed"] or source == "traceback"
    return list(groups.values())
