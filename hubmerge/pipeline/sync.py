"""``hubmerge sync``: re-merge and push a merged repo when an upstream it tracks has moved."""

from __future__ import annotations

import logging
from typing import Callable

from hubmerge.hub.client import Hub
from hubmerge.hub.watch import CheckReport, check
from hubmerge.pipeline.push import PushResult, push
from hubmerge.spec.model import ModelRef
from hubmerge.spec.parse import spec_from_dict
from hubmerge.spec.pin import map_model_refs

logger = logging.getLogger(__name__)


def sync(hub: Hub, target: str, *, create_pr: bool = False, device: str = "cpu",
         show_progress: bool = True,
         on_report: Callable[[CheckReport], None] | None = None) -> tuple[CheckReport, PushResult | None]:
    """Re-merge and push if a tracked source moved; otherwise do nothing. ``on_report`` is called with the
    check's report before anything is merged or pushed (the CLI prints it then, not after the push)."""
    report = check(hub, target)
    if on_report is not None:
        on_report(report)
    if not report.stale:
        logger.debug("%s is up to date with its sources", target)
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
