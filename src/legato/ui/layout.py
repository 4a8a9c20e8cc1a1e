"""A layered (Sugiyama-style) drawing of a workflow graph, computed in Python so it is testable and
the browser needs no layout library.

Steps go top to bottom by their longest path from a root; an edge that spans several layers passes
through invisible dummy nodes so it bends around steps rather than through them; the order inside a
layer is improved by barycenter sweeps, keeping the order with the fewest crossings; then each node
is pulled towards its neighbours without overlapping the others in its layer.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

NODE_W = 190.0
NODE_H = 46.0
GAP_X = 34.0  # between neighbours in a layer
GAP_Y = 64.0  # between layers (room for labels on branch edges)
DUMMY_W = 12.0
MARGIN = 20.0
SWEEPS = 12


@dataclass
class Placed:
    """A node's box: (x, y) is its top-left corner."""

    id: str
    x: float
    y: float
    w: float
    h: float
    layer: int

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


@dataclass
class Routed:
    source: str
    target: str
    points: list[tuple[float, float]]
    kind: str = "after"
    label: str | None = None

    def path(self) -> str:
        """An SVG path: straight into and out of boxes, smooth vertical curves in between."""
        (x0, y0), rest = self.points[0], self.points[1:]
        parts = [f"M{x0:.1f},{y0:.1f}"]
        for x1, y1 in rest:
            mid = (y0 + y1) / 2
            parts.append(f"C{x0:.1f},{mid:.1f} {x1:.1f},{mid:.1f} {x1:.1f},{y1:.1f}")
            x0, y0 = x1, y1
        return " ".join(parts)


@dataclass
class Layout:
    width: float
    height: float
    nodes: list[Placed] = field(default_factory=list)
    edges: list[Routed] = field(default_factory=list)
    crossings: int = 0


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str = "after"
    label: str | None = None


def layers_of(nodes: Sequence[str], edges: Sequence[Edge]) -> dict[str, int]:
    """Longest-path layering: a step sits one layer below its deepest dependency. `nodes` must be
    in topological order (the model keeps them so); a cycle would be a bug upstream."""
    deps: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        deps[e.target].append(e.source)
    layer: dict[str, int] = {}
    for n in nodes:
        layer[n] = 1 + max((layer[d] for d in deps[n]), default=-1)
    return layer


def _crossings(upper: list[str], lower: list[str], down: dict[str, list[str]]) -> int:
    """Crossings between two adjacent layers: pairs of edges whose ends are in opposite orders."""
    pos = {n: i for i, n in enumerate(lower)}
    ends = [pos[t] for n in upper for t in sorted(down.get(n, ()), key=pos.__getitem__)]
    # Count inversions (merge-sort style would be O(E log E); E per layer pair is small here).
    count = 0
    for i, a in enumerate(ends):
        for b in ends[i + 1 :]:
            if b < a:
                count += 1
    return count


def _total(order: list[list[str]], down: dict[str, list[str]]) -> int:
    return sum(_crossings(order[i], order[i + 1], down) for i in range(len(order) - 1))


def _sweep(order: list[list[str]], link: dict[str, list[str]], rows: range) -> None:
    """Reorder each layer in `rows` by the mean position of its links in the layer just done."""
    for i in rows:
        prev = {n: k for k, n in enumerate(order[i - 1] if rows.step > 0 else order[i + 1])}
        current = order[i]

        def key(item: tuple[int, str], prev: dict[str, int] = prev) -> float:
            k, n = item
            linked = [prev[m] for m in link.get(n, ()) if m in prev]
            return sum(linked) / len(linked) if linked else float(k)

        order[i] = [n for _, n in sorted(enumerate(current), key=key)]


def _place(
    order: list[list[str]],
    width: dict[str, float],
    up: dict[str, list[str]],
    down: dict[str, list[str]],
) -> dict[str, float]:
    """Centre x of each node: pulled to the mean of its neighbours, pushed apart within a layer."""
    cx: dict[str, float] = {}
    for row in order:
        x = 0.0
        for n in row:
            cx[n] = x + width[n] / 2
            x += width[n] + GAP_X
    widest = max(sum(width[n] + GAP_X for n in row) for row in order)
    for row in order:  # centre every layer under the widest
        shift = (widest - sum(width[n] + GAP_X for n in row)) / 2
        for n in row:
            cx[n] += shift
    for it in range(8):
        rows = order if it % 2 == 0 else order[::-1]
        link = up if it % 2 == 0 else down
        for row in rows:
            want = []
            for n in row:
                near = [cx[m] for m in link.get(n, ())]
                want.append(sum(near) / len(near) if near else cx[n])
            _spread(row, want, width, cx)
    low = min(cx[n] - width[n] / 2 for row in order for n in row)
    return {n: x - low + MARGIN for n, x in cx.items()}


def _spread(
    row: list[str], want: list[float], width: dict[str, float], cx: dict[str, float]
) -> None:
    """Put each node of a row as near its wanted x as the order and spacing allow: a left-to-right
    pass that pushes right, a right-to-left one that pushes left, and the mean of the two."""
    n = len(row)
    right = list(want)
    for i in range(1, n):
        least = right[i - 1] + (width[row[i - 1]] + width[row[i]]) / 2 + GAP_X
        right[i] = max(right[i], least)
    left = list(want)
    for i in range(n - 2, -1, -1):
        most = left[i + 1] - (width[row[i + 1]] + width[row[i]]) / 2 - GAP_X
        left[i] = min(left[i], most)
    mixed = [(a + b) / 2 for a, b in zip(left, right, strict=True)]
    for i in range(1, n):  # the mean of two valid placements can still be too tight: fix it
        least = mixed[i - 1] + (width[row[i - 1]] + width[row[i]]) / 2 + GAP_X
        mixed[i] = max(mixed[i], least)
    for name, x in zip(row, mixed, strict=True):
        cx[name] = x


def layout(nodes: Sequence[str], edges: Sequence[Edge]) -> Layout:
    """Place `nodes` (in topological order) and route `edges` between them."""
    if not nodes:
        return Layout(2 * MARGIN, 2 * MARGIN)
    layer = layers_of(nodes, edges)
    depth = max(layer.values()) + 1
    order: list[list[str]] = [[] for _ in range(depth)]
    for n in nodes:
        order[layer[n]].append(n)
    width = {n: NODE_W for n in nodes}
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    chains: list[tuple[Edge, list[str]]] = []
    for k, e in enumerate(edges):
        chain = [e.source]
        for i in range(layer[e.source] + 1, layer[e.target]):
            dummy = f"\x00{k}.{i}"  # NUL cannot be in a step name
            order[i].append(dummy)
            width[dummy] = DUMMY_W
            chain.append(dummy)
        chain.append(e.target)
        for a, b in itertools.pairwise(chain):
            down.setdefault(a, []).append(b)
            up.setdefault(b, []).append(a)
        chains.append((e, chain))

    best = [list(row) for row in order]
    fewest = _total(best, down)
    for it in range(SWEEPS):
        if fewest == 0:
            break
        if it % 2 == 0:
            _sweep(order, up, range(1, depth))
        else:
            _sweep(order, down, range(depth - 2, -1, -1))
        count = _total(order, down)
        if count < fewest:
            best, fewest = [list(row) for row in order], count

    cx = _place(best, width, up, down)
    y = {
        n: MARGIN + layer_index * (NODE_H + GAP_Y)
        for layer_index, row in enumerate(best)
        for n in row
    }
    out = Layout(0.0, MARGIN * 2 + depth * NODE_H + (depth - 1) * GAP_Y, crossings=fewest)
    for n in nodes:
        out.nodes.append(Placed(n, cx[n] - NODE_W / 2, y[n], NODE_W, NODE_H, layer[n]))
    right = max(p.x + p.w for p in out.nodes)
    for e, chain in chains:
        points = [(cx[e.source], y[e.source] + NODE_H)]
        points += [(cx[d], y[d] + NODE_H / 2) for d in chain[1:-1]]
        points.append((cx[e.target], y[e.target]))
        out.edges.append(Routed(e.source, e.target, points, e.kind, e.label))
        right = max(right, *(x + NODE_W / 4 for x, _ in points))  # bends, and their curves
    out.width = right + MARGIN
    return out
