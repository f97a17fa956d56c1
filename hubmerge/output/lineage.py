"""A model's family tree, read from model cards: its parents, their parents, and so on.

Parents are found, in order of preference, in
  1. our ``hubmerge:`` block (the pinned recipe),
  2. a mergekit-style card's "Configuration" YAML block, or the repo's ``mergekit_config.yml``,
  3. the Hub's ``base_model`` metadata (``base_model_relation`` or the Hub's own inference).

The walk is breadth first, up to a depth, de-duplicated by repo id, safe against cycles (a card naming
its own descendant), and bounded in Hub calls. A parent that cannot be read is shown as missing rather
than failing the whole walk. Cards read at a pinned commit SHA are cached in memory for the process.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubmerge.errors import HubError, HubmergeError
from hubmerge.output.card import split_front_matter

logger = logging.getLogger(__name__)

DEFAULT_DEPTH = 4
DEFAULT_MAX_CALLS = 64
RELATIONS = ("merge", "finetune", "adapter", "quantized")
MERGEKIT_CONFIG = "mergekit_config.yml"
_SHA = re.compile(r"^[0-9a-f]{40}$")


# ---------------------------------------------------------------------------------------------
# Reading recipes and parents out of cards


def format_setting(value: Any) -> str:
    """A raw parameter value as a short string: ``0.5``, ``[0.2, 0.8]``, ``self_attn: [0.2, 0.8]; *: 0.4``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            return "(" + "; ".join(f"{v.get('filter') or '*'}: {format_setting(v.get('value'))}" for v in value) + ")"
        return "[" + ", ".join(format_setting(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_setting(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_params(params: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={format_setting(v)}" for k, v in (params or {}).items())


@dataclass
class RecipeParent:
    """A model a recipe names, with what the recipe says about it (merged over all its mentions)."""

    path: str
    revision: str | None
    roles: list[str] = field(default_factory=list)  # "base", "model", "slice", "adapter"
    params: dict[str, Any] = field(default_factory=dict)
    layers: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return self.path + (f"@{self.revision}" if self.revision else "")

    def describe(self, *, weights_only: bool = False) -> str:
        """``base``, ``weight=0.5, density=0.6``, ``layers 0-8``... (weights_only: for short edge labels)."""
        parts: list[str] = []
        if "base" in self.roles:
            parts.append("base")
        params = self.params
        if weights_only:
            params = {k: v for k, v in params.items() if k in ("weight", "t", "scale")}
        if params:
            parts.append(format_params(params))
        if self.layers:
            parts.append("layers " + ", ".join(f"{a}-{b}" for a, b in self.layers))
        return ", ".join(parts)


def _ref_of(value: Any) -> tuple[str, str | None] | None:
    """(path, revision) of a raw model reference, its LoRA adapter left out; None when unreadable."""
    refs = _refs_of(value)
    return refs[0] if refs else None


def _adapter_of(value: Any) -> tuple[str, str | None] | None:
    """(path, revision) of the LoRA adapter a raw model reference folds in (``model+adapter``, ``lora:``)."""
    refs = _refs_of(value)
    return refs[1] if len(refs) > 1 else None


def _refs_of(value: Any) -> list[tuple[str, str | None]]:
    """[model] or [model, adapter] of a raw model reference; [] when unreadable."""
    from hubmerge.spec.parse import parse_ref

    if isinstance(value, str):
        try:
            ref = parse_ref(value)
        except HubmergeError:
            return []
        return [(ref.path, ref.revision)] + ([(ref.lora.path, ref.lora.revision)] if ref.lora is not None else [])
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            rev = value.get("revision")
            return [(value["path"], rev if isinstance(rev, str) else None)]
        if "model" in value:
            model = _refs_of(value["model"])
            adapter = _refs_of(value["lora"])[:1] if value.get("lora") is not None else []
            return model + adapter
    return []


def recipe_parents(recipe: dict[str, Any]) -> list[RecipeParent]:
    """Every model a (mergekit-grammar) recipe names, base first then in spec order, de-duplicated by path."""
    found: dict[str, RecipeParent] = {}

    def add(raw: Any, role: str, params: Any = None, layers: Any = None) -> None:
        ref = _ref_of(raw)
        if ref is None:
            return
        add_ref(ref, role, params, layers)
        adapter = _adapter_of(raw)
        if adapter is not None:  # folded into the model's weights: a parent of its own
            add_ref(adapter, "adapter")

    def add_ref(ref: tuple[str, str | None], role: str, params: Any = None, layers: Any = None) -> None:
        parent = found.setdefault(ref[0], RecipeParent(ref[0], ref[1]))
        if parent.revision is None and ref[1]:
            parent.revision = ref[1]
        if role not in parent.roles:
            parent.roles.append(role)
        if isinstance(params, dict):
            for k, v in params.items():
                parent.params.setdefault(k, v)
        if isinstance(layers, (list, tuple)) and len(layers) == 2 and all(isinstance(x, int) for x in layers):
            parent.layers.append((layers[0], layers[1]))

    def container(doc: dict[str, Any]) -> None:
        for m in doc.get("models") or []:
            if isinstance(m, dict):
                add(m.get("model"), "model", m.get("parameters"))
        for s in doc.get("slices") or []:
            if not isinstance(s, dict):
                continue
            if s.get("base_model") is not None:
                add(s["base_model"], "base")
            for src in s.get("sources") or []:
                if isinstance(src, dict):
                    add(src.get("model"), "slice", src.get("parameters"), src.get("layer_range"))

    if not isinstance(recipe, dict):
        return []
    if recipe.get("base_model") is not None:
        add(recipe["base_model"], "base")
    container(recipe)
    for module in (recipe.get("modules") or {}).values():
        if isinstance(module, dict):
            container(module)
    return list(found.values())


_HEADING = re.compile(r"^#{1,6}\s*(?:merge\s+)?configuration\s*:?\s*$", re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r"^(`{3,}|~{3,})[ \t]*([A-Za-z0-9_-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.MULTILINE | re.DOTALL)


def _yaml_mapping(text: str) -> dict[str, Any] | None:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        return None
    doc = docs[-1] if docs else None  # mergekit-multi: the last stage is the final model
    return doc if isinstance(doc, dict) and "merge_method" in doc else None


def config_block(body: str) -> dict[str, Any] | None:
    """The recipe in a mergekit-made card: the YAML block under "### Configuration" (or, failing that,
    the first YAML block that holds a ``merge_method``)."""
    heading = _HEADING.search(body)
    blocks = list(_FENCE.finditer(body))
    if heading is not None:
        for block in blocks:
            if block.start() > heading.end():
                found = _yaml_mapping(block.group(3))
                if found is not None:
                    return found
                break
    for block in blocks:
        if block.group(2).lower() in ("yaml", "yml", ""):
            found = _yaml_mapping(block.group(3))
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class CardInfo:
    """What a model's repo (or folder) says about itself: card metadata and body, file names, and the
    content of ``mergekit_config.yml`` when the card holds no recipe."""

    meta: dict[str, Any]
    body: str
    files: tuple[str, ...] = ()
    mergekit_config: str | None = None


def card_info(readme: str | None, files: list[str] | tuple[str, ...] = (), mergekit_config: str | None = None,
              *, source: str = "README.md") -> CardInfo:
    meta, body = {}, ""
    if readme:
        try:
            meta, body = split_front_matter(readme, source=source)
        except HubmergeError as exc:
            logger.warning("%s; reading its body only", exc.message)
            body = readme
    return CardInfo(meta, body, tuple(files), mergekit_config)


def find_recipe(info: CardInfo) -> tuple[str, dict[str, Any]] | None:
    """(kind, recipe): kind is "hubmerge" (our pinned recipe), "mergekit card" or "mergekit_config.yml"."""
    block = info.meta.get("hubmerge")
    if isinstance(block, dict) and isinstance(block.get("recipe"), dict):
        return "hubmerge", block["recipe"]
    found = config_block(info.body)
    if found is not None:
        return "mergekit card", found
    if info.mergekit_config:
        found = _yaml_mapping(info.mergekit_config)
        if found is not None:
            return MERGEKIT_CONFIG, found
    return None


@dataclass
class ParentLink:
    path: str
    revision: str | None
    relation: str
    label: str  # relation plus method and weights, for edges


def parents_of(info: CardInfo) -> list[ParentLink]:
    found = find_recipe(info)
    if found is not None:
        _, recipe = found
        method = str(recipe.get("merge_method", "?"))
        links = []
        for p in recipe_parents(recipe):
            if p.roles == ["adapter"]:
                links.append(ParentLink(p.path, p.revision, "adapter", "adapter (LoRA, folded in)"))
                continue
            detail = p.describe(weights_only=True)
            links.append(ParentLink(p.path, p.revision, "merge", f"merge ({method}" + (f", {detail})" if detail else ")")))
        return links
    bases = info.meta.get("base_model")
    bases = [bases] if isinstance(bases, str) else [b for b in (bases or []) if isinstance(b, str)]
    relation = info.meta.get("base_model_relation")
    if relation not in RELATIONS:  # the Hub's inference, roughly
        if len(bases) > 1:
            relation = "merge"
        elif "adapter_config.json" in info.files:
            relation = "adapter"
        elif any(f.endswith(".gguf") for f in info.files):
            relation = "quantized"
        else:
            relation = "finetune"
    out = []
    for b in bases:
        ref = _ref_of(b)
        if ref is not None:
            out.append(ParentLink(ref[0], ref[1], relation, relation))
    return out


# ---------------------------------------------------------------------------------------------
# The graph


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
            label = _mermaid_text(node.name)
            if node.status != "ok":
                label += "<br/><i>" + _mermaid_text(node.note or node.status) + "</i>"
            shape = ('(["', '"])') if key == self.root else ('["', '"]')
            lines.append(f"  {ids[key]}{shape[0]}{label}{shape[1]}")
        for e in self.edges:
            label = e.label + (" (cycle)" if e.cycle else "")
            lines.append(f'  {ids[e.parent]} -->|"{_mermaid_text(label)}"| {ids[e.child]}')
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


def _mermaid_text(text: str) -> str:
    return (text.replace("&", "#amp;").replace('"', "#quot;").replace("|", "#124;")
            .replace("<", "#lt;").replace(">", "#gt;"))


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


# ---------------------------------------------------------------------------------------------
# Walking


class _CardCache:
    """Cards read at a commit SHA never change: an LRU over (endpoint, repo, sha), shared in the process."""

    def __init__(self, size: int = 512):
        self.size = size
        self._data: OrderedDict[tuple[str, str, str], CardInfo] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> CardInfo | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key: tuple[str, str, str], value: CardInfo) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


CARD_CACHE = _CardCache()


class _OutOfCalls(Exception):
    pass


def _looks_like_repo_id(path: str) -> bool:
    from hubmerge.sources.model import _looks_like_repo_id as looks

    return looks(path)


class LineageBuilder:
    """Builds a Lineage; ``hub`` may be None (local folders only: Hub parents are left unexplored)."""

    def __init__(self, hub: Any = None, *, depth: int = DEFAULT_DEPTH, max_calls: int = DEFAULT_MAX_CALLS,
                 cache: _CardCache | None = None):
        if depth < 0:
            raise HubmergeError(f"lineage depth must be 0 or more, got {depth}")
        self.hub = hub
        self.depth = depth
        self.max_calls = max_calls
        self.cache = cache if cache is not None else CARD_CACHE
        self.calls = 0
        self.endpoint = getattr(hub, "endpoint", None) or _default_endpoint()

    # -- entry points ---------------------------------------------------------------------------
    def from_target(self, target: str) -> Lineage:
        """The lineage of a Hub repo (``org/name[@rev]``) or a local model folder."""
        folder = Path(target).expanduser()
        if folder.is_dir():
            key, node = self._local_node(folder, target, 0)
        else:
            ref = _ref_of(target)
            if ref is None or not _looks_like_repo_id(ref[0]):
                raise HubmergeError(f"{target!r} is neither a local folder nor a Hub repo id",
                                    hint="pass org/name, org/name@revision or a folder holding a README.md")
            key, node = f"hub:{ref[0]}", LineageNode(f"hub:{ref[0]}", ref[0], "hub", 0, url=self._url(ref[0]))
            node.revision = ref[1]
        lineage = Lineage(key, {key: node})
        info = self._read(node)
        if node.status != "ok" and node.kind == "hub":
            raise HubError(f"{target}: {node.note}", hint="check the repo id and the token (HF_TOKEN)")
        self._walk(lineage, [(key, info)])
        return lineage

    def from_parents(self, root_name: str, links: list[ParentLink],
                     known: dict[str, tuple[str | None, CardInfo, Path | None]] | None = None) -> Lineage:
        """The lineage of a model being made now: its parents given, their cards possibly known already
        (``known``: path -> (sha, card, local folder)), so no Hub call is spent on them."""
        key = f"new:{root_name}"
        lineage = Lineage(key, {key: LineageNode(key, root_name, "new", 0)})
        known = known or {}
        frontier: list[tuple[str, CardInfo | None]] = []
        for link in links:
            pkey, created = self._add_parent(lineage, key, link, 1, None, known.get(link.path))
            if created:
                info = self._known_info(lineage.nodes[pkey], known.get(link.path))
                frontier.append((pkey, info))
        self._walk(lineage, frontier, start_depth=1)
        return lineage

    # -- the walk -------------------------------------------------------------------------------
    def _walk(self, lineage: Lineage, frontier: list[tuple[str, CardInfo | None]], start_depth: int = 0) -> None:
        depth = start_depth
        while frontier:
            next_frontier: list[tuple[str, CardInfo | None]] = []
            for key, info in frontier:
                node = lineage.nodes[key]
                if depth >= self.depth:  # not read: its parents would lie beyond the depth asked for
                    if info is not None and parents_of(info):
                        node.note = f"parents beyond depth {self.depth} not shown"
                    continue
                if info is None and node.status == "ok":
                    info = self._read(node)
                if node.status != "ok" or info is None:
                    continue
                links = parents_of(info)
                for link in links:
                    pkey, created = self._add_parent(lineage, key, link, depth + 1, node)
                    if created:
                        next_frontier.append((pkey, None))
            frontier = next_frontier
            depth += 1
        lineage.hub_calls = self.calls

    def _add_parent(self, lineage: Lineage, child: str, link: ParentLink, depth: int, child_node: LineageNode | None,
                    known: tuple[str | None, CardInfo, Path | None] | None = None) -> tuple[str, bool]:
        folder = self._local_folder(link.path, child_node, known)
        if folder is not None:
            key, node = self._local_node(folder, link.path, depth)
        elif _looks_like_repo_id(link.path):
            key = f"hub:{link.path}"
            node = LineageNode(key, link.path, "hub", depth, revision=link.revision, url=self._url(link.path))
        else:
            key = f"local:{link.path}"
            node = LineageNode(key, link.path, "local", depth, status="missing", note="local path, not on the Hub")
        if any(e.child == child and e.parent == key for e in lineage.edges):
            return key, False
        created = key not in lineage.nodes
        cycle = key == child or (not created and _reaches(lineage, key, child))
        if cycle:
            logger.warning("lineage: %s lists %s as a parent, which descends from it (cycle); not following it",
                           lineage.nodes[child].name, node.name)
        if created:
            lineage.nodes[key] = node
        lineage.edges.append(LineageEdge(child, key, link.relation, link.label, cycle))
        return key, created

    def _local_folder(self, path: str, child: LineageNode | None,
                      known: tuple[str | None, CardInfo, Path | None] | None) -> Path | None:
        if known is not None:  # the merge already opened it: it is where the merge found it
            return known[2]
        p = Path(path).expanduser()
        if p.is_absolute():
            return p if p.is_dir() else None
        roots: list[Path] = []
        if child is not None and child.kind == "local":
            here = Path(child.key.split(":", 1)[1])
            roots += [here, here.parent]
        elif child is None or child.kind == "new":
            roots.append(Path.cwd())
        for root in roots:
            if (root / p).is_dir():
                return (root / p).resolve()
        return None

    def _local_node(self, folder: Path, name: str, depth: int) -> tuple[str, LineageNode]:
        folder = folder.resolve()
        key = f"local:{folder}"
        return key, LineageNode(key, name, "local", depth)

    def _known_info(self, node: LineageNode, known: tuple[str | None, CardInfo, Path | None] | None) -> CardInfo | None:
        if known is None:
            return None
        sha, info, _ = known
        if node.kind == "hub" and sha:
            node.revision = sha
        return info

    # -- reading one card ------------------------------------------------------------------------
    def _read(self, node: LineageNode) -> CardInfo | None:
        if node.kind == "hub" and self.hub is None:
            node.status, node.note = "unexplored", "not read (no Hub client)"
            return None
        try:
            if node.kind == "local":
                return self._read_local(Path(node.key.split(":", 1)[1]))
            return self._read_hub(node)
        except _OutOfCalls:
            node.status, node.note = "unexplored", f"not read: the limit of {self.max_calls} Hub calls was reached"
        except HubError as exc:
            node.status, node.note = "missing", _short(exc.message)
            logger.info("lineage: %s: %s", node.name, exc.message)
        except HubmergeError as exc:
            node.status, node.note = "missing", _short(exc.message)
        return None

    @staticmethod
    def _read_local(folder: Path) -> CardInfo:
        readme = folder / "README.md"
        config = folder / MERGEKIT_CONFIG
        return card_info(readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else None,
                         sorted(p.name for p in folder.iterdir()),
                         config.read_text(encoding="utf-8", errors="replace") if config.is_file() else None,
                         source=str(readme))

    def _call(self) -> None:
        if self.calls >= self.max_calls:
            raise _OutOfCalls()
        self.calls += 1

    def _read_hub(self, node: LineageNode) -> CardInfo:
        from hubmerge.hub.client import hub_errors

        repo, rev = node.name, node.revision
        if rev and _SHA.match(rev):
            cached = self.cache.get((self.endpoint, repo, rev))
            if cached is not None:
                return cached
        self._call()
        with hub_errors(f"{repo}@{rev or 'main'}"):
            info = self.hub.api.model_info(repo, revision=rev)
        sha = info.sha or rev
        node.revision = sha
        if sha:
            cached = self.cache.get((self.endpoint, repo, sha))
            if cached is not None:
                return cached
        files = [s.rfilename for s in (info.siblings or [])]
        readme = None
        if "README.md" in files:
            self._call()
            data = self.hub.read_small_file(repo, sha, "README.md", max_bytes=5 * 1024 * 1024)
            readme = data.decode("utf-8", errors="replace") if data is not None else None
        card = card_info(readme, files, source=f"{repo}/README.md")
        if find_recipe(card) is None and MERGEKIT_CONFIG in files:
            self._call()
            data = self.hub.read_small_file(repo, sha, MERGEKIT_CONFIG, max_bytes=5 * 1024 * 1024)
            card = CardInfo(card.meta, card.body, card.files, data.decode("utf-8", errors="replace") if data else None)
        if sha:
            self.cache.put((self.endpoint, repo, sha), card)
        return card

    def _url(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"


def _reaches(lineage: Lineage, start: str, target: str) -> bool:
    """Is ``target`` an ancestor of ``start`` (following child -> parent edges)?"""
    seen, stack = set(), [start]
    while stack:
        key = stack.pop()
        if key == target:
            return True
        if key in seen:
            continue
        seen.add(key)
        stack.extend(e.parent for e in lineage.edges if e.child == key)
    return False


def _short(text: str) -> str:
    text = text.splitlines()[0] if text else ""
    for marker in ("repo not found", "revision not found", "gated", "permission denied", "cannot reach"):
        if marker in text:
            return {"repo not found": "not found on the Hub"}.get(marker, text.split(": ", 1)[-1])
    return text[:120]


def _default_endpoint() -> str:
    from hubmerge.hub.client import default_endpoint

    return default_endpoint()


def lineage_of(target: str, *, hub: Any = None, depth: int = DEFAULT_DEPTH,
               max_calls: int = DEFAULT_MAX_CALLS) -> Lineage:
    """``hubmerge lineage``: the family tree of a Hub repo or a local model folder."""
    return LineageBuilder(hub, depth=depth, max_calls=max_calls).from_target(target)
