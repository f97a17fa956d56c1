"""The lineage graph of a pushed merge, drawn server-side as SVG by a small pure-Python renderer.

No graphviz, no network, no JavaScript: a layered layout (ancestors on top, the merge at the bottom),
boxes sized from their text, curved edges with arrowheads.

The graph is hubmerge's own ``Lineage`` (``hubmerge.hub.lineage`` walks the cards), the same the CLI,
the card and the Action's job summary draw; ``from_lineage`` turns it into boxes and edges.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

MAX_NODES = 24
MAX_LABEL = 34


@dataclass
class Node:
    id: str
    title: str
    subtitle: str = ""
    kind: str = "parent"  # "output", "base", "parent", "ancestor" or "missing"


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (from, to, label)

    def add(self, node: Node) -> Node:
        return self.nodes.setdefault(node.id, node)

    def link(self, src: str, dst: str, label: str = "") -> None:
        if (src, dst, label) not in self.edges and src != dst:
            self.edges.append((src, dst, label))


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def from_lineage(lineage: Any, *, subtitle: str = "") -> Graph:
    """hubmerge's ``Lineage`` (nodes keyed by id, edges child -> parent with labels) as a drawable graph."""
    graph = Graph()
    first = {e.parent: e for e in reversed(lineage.edges)}  # the first edge naming each parent
    for key, node in list(lineage.nodes.items())[:MAX_NODES]:
        if key == lineage.root:
            kind, sub = "output", subtitle or (node.revision or "")[:12]
        elif node.status != "ok":
            kind, sub = "missing", _short(node.note or node.status)
        else:
            edge = first.get(key)
            is_base = edge is not None and edge.child == lineage.root and "base" in edge.label.split("(")[-1]
            kind = "base" if is_base else ("parent" if node.depth <= 1 else "ancestor")
            sub = (node.revision or "")[:12] or ("local" if node.kind == "local" else "")
        graph.add(Node(key, _short(node.name, 60), sub, kind))
    for e in lineage.edges:
        if e.parent in graph.nodes and e.child in graph.nodes:
            graph.link(e.parent, e.child, _short(e.label + (" (cycle)" if e.cycle else "")))
    return graph


# ---------------------------------------------------------------------------------------------------
# layout and SVG

FONT = 13
SMALL = 11
CHAR_W = 7.4  # average advance of the sans-serif font at FONT px, generous
SMALL_W = 6.3
PAD_X, BOX_H, GAP_X, GAP_Y, MARGIN = 14, 46, 28, 64, 16
FILL = {"output": "#fde68a", "base": "#ddd6fe", "parent": "#e0f2fe", "ancestor": "#f3f4f6", "missing": "#ffffff"}
STROKE = {"output": "#b45309", "base": "#6d28d9", "parent": "#0369a1", "ancestor": "#6b7280", "missing": "#9ca3af"}


def _layers(graph: Graph) -> list[list[str]]:
    """Longest distance to a sink (the merge), so every edge points downwards."""
    children: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for src, dst, _ in graph.edges:
        if src in children and dst in graph.nodes:
            children[src].append(dst)
    depth: dict[str, int] = {}

    def height(node: str, seen: frozenset) -> int:
        if node in depth:
            return depth[node]
        kids = [k for k in children[node] if k not in seen]
        depth[node] = 0 if not kids else 1 + max(height(k, seen | {node}) for k in kids)
        return depth[node]

    for node in graph.nodes:
        height(node, frozenset())
    top = max(depth.values(), default=0)
    rows: list[list[str]] = [[] for _ in range(top + 1)]
    for node in graph.nodes:  # insertion order keeps base first, then spec order
        rows[top - depth[node]].append(node)
    return rows


def _box_width(node: Node) -> float:
    return max(len(node.title) * CHAR_W, len(node.subtitle) * SMALL_W, 60) + 2 * PAD_X


def _label_width(label: str) -> float:
    return len(label) * SMALL_W + 10


def _bezier(p0: float, p1: float, p2: float, p3: float, t: float) -> float:
    u = 1 - t
    return u * u * u * p0 + 3 * u * u * t * p1 + 3 * u * t * t * p2 + t * t * t * p3


LABEL_T = 0.22  # where along its edge a label sits: near the parent, so sibling edges' labels stay apart


def render_svg(graph: Graph) -> str:
    rows = _layers(graph)
    widths = {n: _box_width(graph.nodes[n]) for n in graph.nodes}
    for src, _, label in graph.edges:  # a box is at least as wide as the label under it
        if src in widths and label:
            widths[src] = max(widths[src], _label_width(label))
    row_w = [sum(widths[n] for n in row) + GAP_X * (len(row) - 1) for row in rows]
    width = max(row_w, default=100) + 2 * MARGIN
    legend_h = 22
    height = len(rows) * BOX_H + (len(rows) - 1) * GAP_Y + 2 * MARGIN + legend_h
    pos: dict[str, tuple[float, float]] = {}
    for r, row in enumerate(rows):
        x = (width - row_w[r]) / 2
        y = MARGIN + r * (BOX_H + GAP_Y)
        for n in row:
            pos[n] = (x, y)
            x += widths[n] + GAP_X
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
           f'width="{width:.0f}" height="{height:.0f}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
           f'role="img" aria-label="lineage graph">',
           "<title>lineage graph</title>",
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#4b5563"/></marker></defs>',
           f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>']
    for src, dst, label in graph.edges:
        if src not in pos or dst not in pos:
            continue
        (sx, sy), (dx, dy) = pos[src], pos[dst]
        x1, y1 = sx + widths[src] / 2, sy + BOX_H
        x2, y2 = dx + widths[dst] / 2, dy
        mid = (y1 + y2) / 2
        out.append(f'<path d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2 - 2:.1f}" '
                   f'fill="none" stroke="#4b5563" stroke-width="1.5" marker-end="url(#arrow)"/>')
        if label:
            lx = _bezier(x1, x1, x2, x2, LABEL_T)
            ly = _bezier(y1, mid, mid, y2, LABEL_T) + SMALL / 2
            out.append(f'<text class="edge-label" x="{lx:.1f}" y="{ly:.1f}" font-size="{SMALL}" text-anchor="middle" '
                       f'fill="#374151" stroke="#ffffff" stroke-width="3" paint-order="stroke">{escape(label)}</text>')
    for n, (x, y) in pos.items():
        node = graph.nodes[n]
        w = widths[n]
        dash = ' stroke-dasharray="5 4"' if node.kind == "missing" else ""
        out.append(f'<g class="node {node.kind}"><rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{BOX_H}" '
                   f'rx="8" fill="{FILL[node.kind]}" stroke="{STROKE[node.kind]}" stroke-width="1.5"{dash}/>')
        title_y = y + (18 if node.subtitle else BOX_H / 2 + FONT / 2 - 2)
        out.append(f'<text x="{x + w / 2:.1f}" y="{title_y:.1f}" font-size="{FONT}" text-anchor="middle" '
                   f'fill="#111827" font-weight="{"bold" if node.kind == "output" else "normal"}">'
                   f'{escape(node.title)}</text>')
        if node.subtitle:
            out.append(f'<text x="{x + w / 2:.1f}" y="{y + 36:.1f}" font-size="{SMALL}" text-anchor="middle" '
                       f'fill="#374151" font-family="DejaVu Sans Mono, Menlo, monospace">{escape(node.subtitle)}</text>')
        out.append("</g>")
    ly = height - MARGIN / 2 - 4
    lx = MARGIN
    for kind, text in (("output", "merge"), ("base", "base model"), ("parent", "parent"), ("ancestor", "ancestor"),
                       ("missing", "not readable")):
        if not any(node.kind == kind for node in graph.nodes.values()):
            continue
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" rx="3" fill="{FILL[kind]}" '
                   f'stroke="{STROKE[kind]}"/><text x="{lx + 16}" y="{ly}" font-size="{SMALL}" fill="#374151">{text}</text>')
        lx += 16 + len(text) * SMALL_W + 18
    out.append("</svg>")
    return "\n".join(out)


def svg_img_tag(svg: str, alt: str = "lineage graph") -> str:
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (f'<img id="lineage-img" alt="{escape(alt)}" style="max-width:100%;height:auto" '
            f'src="data:image/svg+xml;base64,{data}"/>')
