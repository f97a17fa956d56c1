"""Keeping merges fresh: compare the SHAs a merged repo was built from with the heads its sources track,
and re-merge when they moved.

Each Hub source in a recipe either pins a revision (a commit SHA written in the spec) or tracks a branch
(``main`` unless the spec named another); the card records the SHA used. ``check`` costs one resolver HEAD
per tracked source (X-Repo-Commit), not an API call.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from hubmerge.errors import HubError
from hubmerge.hub.client import Hub
from hubmerge.hub.push import PushResult, existing_card, push, recorded_block
from hubmerge.spec.model import ModelRef
from hubmerge.spec.parse import parse_ref, spec_from_dict
from hubmerge.spec.pin import map_model_refs

logger = logging.getLogger(__name__)

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


def recorded_recipe(hub: Hub, target: str) -> tuple[str, dict[str, Any]]:
    head = hub.resolve(target)
    block = recorded_block(existing_card(hub, target, head))
    recipe = block.get("recipe")
    if not isinstance(recipe, dict):
        raise HubError(f"{target} has no hubmerge recipe in its card",
                       hint="only repos pushed by hubmerge can be checked; push it once with 'hubmerge push'")
    return head, recipe


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


def sync(hub: Hub, target: str, *, create_pr: bool = False, device: str = "cpu",
         show_progress: bool = True) -> tuple[CheckReport, PushResult | None]:
    """Re-merge and push if a tracked source moved; otherwise do nothing."""
    report = check(hub, target)
    if not report.stale:
        logger.info("%s is up to date with its sources", target)
        return report, None
    new_shas = {s.source: s.current for s in report.sources if s.changed}
    recipe = map_model_refs(report.recipe, lambda ref: ModelRef(ref.path, new_shas[ref.path], ref.lora)
                            if ref.path in new_shas else ref)
    options = dict(recipe.get("hubmerge") or {})
    options["target"] = target
    recipe["hubmerge"] = options
    spec = spec_from_dict(recipe, source=f"{target} card recipe")
    lines = [f"- {s.source}: {s.recorded[:12]} -> {s.current[:12]}" for s in report.sources if s.changed]
    message = f"hubmerge sync: {len(lines)} upstream change{'s' if len(lines) != 1 else ''}"
    result = push(spec, hub=hub, repo_id=target, create_pr=create_pr, device=device,
                  commit_message=message + "\n\n" + "\n".join(lines), show_progress=show_progress,
                  parent=report.revision)
    return report, result


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


__all__ = ["check", "sync", "render_table", "tracked_refs", "CheckReport", "SourceStatus", "EXIT_STALE",
           "EXIT_UP_TO_DATE", "parse_ref"]
