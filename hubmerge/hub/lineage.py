"""Walking a model's family tree through model cards: its parents, their parents, and so on.

Parents are read from each card (``hubmerge.spec.cards``). The walk is breadth first, up to a depth,
de-duplicated by repo id, safe against cycles (a card naming its own descendant), and bounded in Hub calls.
A parent that cannot be read is shown as missing rather than failing the whole walk. Cards read at a
pinned commit SHA are cached in memory for the process. Local parents (folders) are read from disk.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from hubmerge.errors import HubError, HubmergeError
from hubmerge.output.lineage import Lineage, LineageEdge, LineageNode
from hubmerge.sources.hub_model import default_endpoint
from hubmerge.sources.model import looks_like_repo_id
from hubmerge.spec.cards import (
    MERGEKIT_CONFIG,
    CardInfo,
    ParentLink,
    card_info,
    find_recipe,
    parents_of,
    recipe_file,
    ref_of,
)

logger = logging.getLogger(__name__)

DEFAULT_DEPTH = 4
DEFAULT_MAX_CALLS = 64
_SHA = re.compile(r"^[0-9a-f]{40}$")


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
        self.endpoint = getattr(hub, "endpoint", None) or default_endpoint()

    # -- entry points ---------------------------------------------------------------------------
    def from_target(self, target: str) -> Lineage:
        """The lineage of a Hub repo (``org/name[@rev]``) or a local model folder."""
        folder = Path(target).expanduser()
        if folder.is_dir():
            key, node = self._local_node(folder, target, 0)
        else:
            ref = ref_of(target)
            if ref is None or not looks_like_repo_id(ref[0]):
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
        elif looks_like_repo_id(link.path):
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
            node.status, node.note = "missing", _note(exc)
            logger.info("lineage: %s: %s", node.name, exc.message)
        except HubmergeError as exc:
            node.status, node.note = "missing", _note(exc)
        return None

    @staticmethod
    def _read_local(folder: Path) -> CardInfo:
        readme = folder / "README.md"
        config = folder / (recipe_file([p.name for p in folder.iterdir()]) or MERGEKIT_CONFIG)
        return card_info(readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else None,
                         sorted(p.name for p in folder.iterdir()),
                         config.read_text(encoding="utf-8", errors="replace") if config.is_file() else None,
                         source=str(readme))

    def _call(self) -> None:
        if self.calls >= self.max_calls:
            raise _OutOfCalls()
        self.calls += 1

    def _read_hub(self, node: LineageNode) -> CardInfo:
        repo, rev = node.name, node.revision
        if rev and _SHA.match(rev):
            cached = self.cache.get((self.endpoint, repo, rev))
            if cached is not None:
                return cached
        self._call()
        sha, files = self.hub.repo_files(repo, rev)
        node.revision = sha
        if sha:
            cached = self.cache.get((self.endpoint, repo, sha))
            if cached is not None:
                return cached
        readme = None
        if "README.md" in files:
            self._call()
            data = self.hub.read_small_file(repo, sha, "README.md", max_bytes=5 * 1024 * 1024)
            readme = data.decode("utf-8", errors="replace") if data is not None else None
        card = card_info(readme, files, source=f"{repo}/README.md")
        if find_recipe(card) is None and recipe_file(files):
            self._call()
            data = self.hub.read_small_file(repo, sha, recipe_file(files), max_bytes=5 * 1024 * 1024)
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


def _note(exc: HubmergeError) -> str:
    """Why a parent's card could not be read, in a few words for the graph."""
    if isinstance(exc, HubError) and exc.kind == HubError.NOT_FOUND and exc.missing == "repo":
        return "not found on the Hub"
    if isinstance(exc, HubError) and exc.kind != HubError.OTHER:
        return exc.reason.splitlines()[0]
    return (exc.message.splitlines()[0] if exc.message else "")[:120]


def lineage_of(target: str, *, hub: Any = None, depth: int = DEFAULT_DEPTH,
               max_calls: int = DEFAULT_MAX_CALLS) -> Lineage:
    """``hubmerge lineage``: the family tree of a Hub repo or a local model folder."""
    return LineageBuilder(hub, depth=depth, max_calls=max_calls).from_target(target)
