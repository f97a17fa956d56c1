"""Keeping merges fresh: compare the SHAs a merged repo was built from with the heads its sources track
(``hubmerge.pipeline.sync`` re-merges when they moved).

Each Hub source in a recipe either pins a revision (a commit SHA written in the spec) or tracks a branch
(``main`` unless the spec named another); the card records the SHA used. ``check`` costs one resolver HEAD
per tracked source (X-Repo-Commit), not an API call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hubmerge.hub.client import Hub
from hubmerge.hub.recipes import recorded_recipe
from hubmerge.spec.model import ModelRef
from hubmerge.spec.pin import map_model_refs

# Exit codes of `hubmerge check` (documented in the README).
EXIT_UP_TO_DATE = 0
EXIT_STALE = 10


@dataclass(frozen=True)
class SourceStatus:
    source: str
    tracks: str | None  # branch tracked, or None when the spec pins a revision
    recorded: str
    current: str

    @property
    def changed(self) -> bool:
        return self.tracks is not None and self.current != self.recorded


@dataclass
class CheckReport:
    target: str
    revision: str  # the target's head that was checked
    sources: list[SourceStatus]
    recipe: dict[str, Any]

    @property
    def stale(self) -> bool:
        return any(s.changed for s in self.sources)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "revision": self.revision, "stale": self.stale,
                "sources": [{**asdict(s), "changed": s.changed} for s in self.sources]}


def hub_sources(recipe: dict[str, Any]) -> list[ModelRef]:
    refs: dict[str, ModelRef] = {}

    def collect(ref: ModelRef) -> ModelRef:
        if ref.revision and _is_sha(ref.revision):
            refs.setdefault(ref.path, ref)
        return ref

    map_model_refs(recipe, collect)
    return list(refs.values())


def _is_sha(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


def check(hub: Hub, target: str) -> CheckReport:
    head, recipe = recorded_recipe(hub, target)
    track = dict((recipe.get("hubmerge") or {}).get("track") or {})
    statuses = []
    for ref in hub_sources(recipe):
        branch = track.get(ref.path)
        current = hub.head_sha(ref.path, branch) if branch else ref.revision
        statuses.append(SourceStatus(ref.path, branch, ref.revision, current))
    return CheckReport(target, head, statuses, recipe)


def render_table(report: CheckReport) -> str:
    rows = [("source", "tracks", "recorded", "current", "changed")]
    for s in report.sources:
        rows.append((s.source, s.tracks or "(pinned)", s.recorded[:12], s.current[:12], "yes" if s.changed else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    state = "STALE" if report.stale else "up to date"
    return "\n".join([f"{report.target} @ {report.revision[:12]}: {state}"] + lines)


def tracked_refs(recipe: dict[str, Any]) -> dict[str, str]:
    """repo id -> branch, for the sources a recipe tracks."""
    track = dict((recipe.get("hubmerge") or {}).get("track") or {})
    return {ref.path: track[ref.path] for ref in hub_sources(recipe) if ref.path in track}
