"""A model's family tree as a graph, and its renderings: Mermaid, a Markdown list, Graphviz dot, JSON.

``hubmerge.hub.lineage`` builds the graph by walking the cards; this module only draws it. One Mermaid
escaper serves every rendering (the CLI, the card, the Action's job summary and the Space).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from hubmerge.errors import HubmergeError


@dataclass
class LineageNode:
    key: str
    name: str  # Hub repo id, or a local path as the recipe wrote it
    kind: str  # "hub" | "local"
    depth: int
    revision: str | None = None  # commit SHA the card was read at
    status: str = "ok"  # ok | missing | unexplored
    note: str = ""
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.name, "kind": self.kind, "depth": self.depth, "revision": self.revision,
                "status": self.status, "note": self.note, "url": self.url}


@dataclass
class LineageEdge:
    child: str  # node key
    parent: str
    relation: str
    label: str
    cycle: bool = False


@dataclass
class Lineage:
    root: str
    nodes: dict[str, LineageNode] = field(default_factory=dict)
    edges: list[LineageEdge] = field(default_factory=list)
    hub_calls: int = 0

    def parents(self, key: str) -> list[LineageEdge]:
        return [e for e in self.edges if e.child == key]

    def edge_pairs(self) -> set[tuple[str, str]]:
        """(parent name, child name) of every edge."""
        return {(self.nodes[e.parent].name, self.nodes[e.child].name) for e in self.edges}

    # -- renderers ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"root": self.nodes[self.root].name,
                "nodes": [n.to_dict() for n in self.nodes.values()],
                "edges": [{"parent": self.nodes[e.parent].name, "child": self.nodes[e.child].name,
                           "relation": e.relation, "label": e.label, "cycle": e.cycle} for e in self.edges],
                "hub_calls": self.hub_calls}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _node_ids(self) -> dict[str, str]:
        ids: dict[str, str] = {}
        used: set[str] = set()
        for key, node in self.nodes.items():
            base = "n_" + (re.sub(r"[^A-Za-z0-9_]", "_", node.name).strip("_") or "model")
            nid, k = base, 2
            while nid in used:
                nid, k = f"{base}_{k}", k + 1
            used.add(nid)
            ids[key] = nid
        return ids

    def to_mermaid(self) -> str:
        ids = self._node_ids()
        lines = ["flowchart TD"]
        for key, node in self.nodes.items():
            label = mermaid_text(node.name)
            if node.status != "ok":
                label += "<br/><i>" + mermaid_text(node.note or node.status) + "</i>"
            shape = ('(["', '"])') if key == self.root else ('["', '"]')
            lines.append(f"  {ids[key]}{shape[0]}{label}{shape[1]}")
        for e in self.edges:
            label = e.label + (" (cycle)" if e.cycle else "")
            lines.append(f'  {ids[e.parent]} -->|"{mermaid_text(label)}"| {ids[e.child]}')
        for key, node in self.nodes.items():
            if node.url:
                lines.append(f'  click {ids[key]} href "{node.url}" _blank')
        missing = [ids[k] for k, n in self.nodes.items() if n.status != "ok"]
        if missing:
            lines.append("  classDef missing stroke-dasharray: 5 5,color:#888")
            lines.append(f"  class {','.join(missing)} missing")
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        """A nested list from the model down to its ancestors; a node seen before is not repeated."""
        lines: list[str] = []
        shown: set[str] = set()

        def link(node: LineageNode) -> str:
            text = f"[{node.name}]({node.url})" if node.url else f"`{node.name}`"
            if node.revision:
                text += f" `{node.revision[:12]}`"
            if node.status != "ok":
                text += f" — *{node.note or node.status}*"
            return text

        def visit(key: str, indent: int) -> None:
            for e in self.parents(key):
                parent = self.nodes[e.parent]
                again = e.parent in shown
                suffix = " (cycle, see above)" if e.cycle else (" (see above)" if again and self.parents(e.parent) else "")
                lines.append("  " * indent + f"- {e.label}: {link(parent)}{suffix}")
                if not again:
                    shown.add(e.parent)
                    visit(e.parent, indent + 1)

        root = self.nodes[self.root]
        lines.append(f"- **{root.name}**" + (f" — *{root.note or root.status}*" if root.status != "ok" else ""))
        shown.add(self.root)
        visit(self.root, 1)
        return "\n".join(lines) + "\n"

    def to_dot(self) -> str:
        lines = ["digraph lineage {", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
        for key, node in self.nodes.items():
            attrs = [f'label="{_dot_text(node.name)}"']
            if node.url:
                attrs.append(f'URL="{_dot_text(node.url)}"')
            if node.status != "ok":
                attrs.append('style=dashed, tooltip="' + _dot_text(node.note or node.status) + '"')
            if key == self.root:
                attrs.append("peripheries=2")
            lines.append(f'  "{_dot_text(node.name)}" [{", ".join(attrs)}];')
        for e in self.edges:
            label = e.label + (" (cycle)" if e.cycle else "")
            lines.append(f'  "{_dot_text(self.nodes[e.parent].name)}" -> "{_dot_text(self.nodes[e.child].name)}" '
                         f'[label="{_dot_text(label)}"];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def render(self, fmt: str) -> str:
        renderers = {"mermaid": self.to_mermaid, "markdown": self.to_markdown, "json": self.to_json,
                     "dot": self.to_dot}
        if fmt not in renderers:
            raise HubmergeError(f"unknown lineage format {fmt!r}", hint="use mermaid, markdown, json or dot")
        return renderers[fmt]()


def direct_lineage(root: str, parents: Iterable[tuple[str, str | None, bool, str]], *,
                   revision: str | None = None, endpoint: str | None = None) -> Lineage:
    """One generation: a merge and the models it was made from, for when their cards are not walked.
    ``parents``: (name, pinned revision, is on the Hub, role "base" or "model")."""
    key = f"new:{root}"
    lineage = Lineage(key, {key: LineageNode(key, root, "new", 0, revision=revision)})
    for name, rev, is_hub, role in parents:
        kind = "hub" if is_hub else "local"
        pkey = f"{kind}:{name}"
        if pkey not in lineage.nodes:
            url = f"{endpoint}/{name}" if endpoint and is_hub else None
            lineage.nodes[pkey] = LineageNode(pkey, name, kind, 1, revision=rev, url=url)
        lineage.edges.append(LineageEdge(key, pkey, "merge", "merge (base)" if role == "base" else "merge"))
    return lineage


def mermaid_text(text: str) -> str:
    return (text.replace("&", "#amp;").replace('"', "#quot;").replace("|", "#124;")
            .replace("<", "#lt;").replace(">", "#gt;"))


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
