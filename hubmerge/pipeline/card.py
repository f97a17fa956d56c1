"""The card of a merge as a job writes it: the parents' cards read, the lineage walked, the README rendered."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hubmerge.errors import HubmergeError
from hubmerge.hub.lineage import DEFAULT_DEPTH, LineageBuilder
from hubmerge.merge.plan import MergePlan
from hubmerge.output.card import pinned_recipe_block, render_card, update_readme
from hubmerge.output.lineage import Lineage
from hubmerge.output.parents import ParentCard, parent_cards
from hubmerge.spec.cards import CardInfo, parents_of

logger = logging.getLogger(__name__)


def merge_lineage(root_name: str, recipe: dict[str, Any], parents: list[ParentCard], hub: Any,
                  depth: int | None = None) -> Lineage | None:
    """The family tree of a model being made from ``recipe``, its parents' cards already read; None (and a
    warning) when it cannot be walked: the card must not fail a finished merge."""
    links = parents_of(CardInfo({"hubmerge": {"recipe": recipe}}, ""))
    known = {p.name: (p.revision, p.info, p.folder) for p in parents}
    try:
        return LineageBuilder(hub, depth=DEFAULT_DEPTH if depth is None else depth).from_parents(
            root_name, links, known)
    except HubmergeError as exc:
        logger.warning("lineage left out of the card: %s", exc.message)
        return None


def card_text(plan: MergePlan, digest: str | None, *, title: str, device: str = "cpu", repo_id: str | None = None,
              hub: Any = None, existing: str | None = None, lineage_depth: int | None = None,
              warn: bool = True) -> str:
    """The README of a merge (``existing``: the README it replaces, whose prose and own keys are kept)."""
    parents = parent_cards(plan.models)
    recipe = pinned_recipe_block(plan, digest, device=device)["recipe"]
    lineage = merge_lineage(title if repo_id is None else repo_id, recipe, parents, hub, lineage_depth)
    card = render_card(plan, digest, title=title, device=device, repo_id=repo_id,
                       endpoint=getattr(hub, "endpoint", None), parents=parents, lineage=lineage, warn=warn)
    return update_readme(existing, card) if existing else card


def write_card(plan: MergePlan, digest: str | None, folder: Path, *, title: str | None = None,
               existing: str | None = None, device: str = "cpu", repo_id: str | None = None,
               hub: Any = None) -> str:
    """Write the card as ``folder/README.md`` and return its text."""
    card = card_text(plan, digest, title=title or folder.name, device=device, repo_id=repo_id, hub=hub,
                     existing=existing)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return card
