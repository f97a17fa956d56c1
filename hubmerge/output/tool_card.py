"""The card of an extracted LoRA adapter or a tokenizer transplant: Hub metadata, sources, what was kept
and lost, lineage, the pinned recipe and how to use the result.

Same conventions as a merge card (``output.card``): our section between the BEGIN/END markers and our
metadata keys replace only themselves on a re-push; the license follows the parents; the ``hubmerge:``
block holds the recipe pinned to commit SHAs, the content hash of the tensors and the versions, so
``reproduce``, ``check`` and ``sync`` work on the repo. An adapter says ``base_model: <base>``,
``base_model_relation: adapter`` and ``library_name: peft``, so the Hub lists it among the base's adapters;
a transplant says ``base_model: <model>``, ``base_model_relation: finetune``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from hubmerge.output.card import BEGIN, END, PROJECT_URL, pinned_block, source_link, update_readme
from hubmerge.output.lineage import Lineage
from hubmerge.output.parents import ParentCard, decide_license, license_summary
from hubmerge.sources.hub_model import default_endpoint
from hubmerge.spec.frontmatter import front_matter
from hubmerge.spec.yamlio import dump_yaml

logger = logging.getLogger(__name__)

RELATIONS = {"extract_lora": "adapter", "tokensurgeon": "finetune"}
TAGS = {"extract_lora": ["peft", "lora", "hubmerge", "extract-lora"],
        "tokensurgeon": ["hubmerge", "tokensurgeon", "tokenizer-transplant"]}


@dataclass
class ToolCard:
    """What the card of a tool's output says, gathered by the job that made it."""

    tool: str  # "extract_lora" | "tokensurgeon"
    raw: dict[str, Any]  # the recipe as written
    sources: list[Any]  # opened inputs (ModelSource), in recipe order
    roles: dict[str, str]  # source name -> role ("base", "fine-tune", "model", "donor")
    parent: str  # the source the output is based on (base_model metadata)
    summary: str
    details: list[str]  # markdown lines of the "what was kept" section
    details_title: str
    stats: dict[str, Any]  # recorded under hubmerge.<tool> in the metadata
    usage: list[str]  # python lines
    library: str = "transformers"
    digest: str | None = None
    dtype: str | None = None
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


def pinned_tool_block(card: ToolCard) -> dict[str, Any]:
    block = pinned_block(card.raw, card.sources, card.digest, dtype=card.dtype, device=card.device)
    block[card.tool] = card.stats
    return block


def render_tool_card(card: ToolCard, *, title: str, parents: list[ParentCard], lineage: Lineage | None,
                     repo_id: str | None = None, endpoint: str | None = None, warn: bool = True) -> str:
    """The whole README.md; ``parents``: the inputs' own cards; ``lineage``: the family tree (walked by
    the job), None when it could not be walked."""
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    license_override = (card.raw.get("hubmerge") or {}).get("license")
    decision = decide_license(license_override, parents)
    if decision.mixed and not license_override and warn:
        logger.warning("the parents' licenses %s; the card says 'license: other'. Set 'hubmerge: {license: ...}' "
                       "in the recipe once you know the license that applies", license_summary(decision.table))
    block = pinned_tool_block(card)
    by_name = {s.name: s for s in card.sources}
    meta: dict[str, Any] = dict(decision.metadata)
    parent = by_name.get(card.parent)
    if parent is not None and parent.is_hub:
        meta["base_model"] = parent.name
        meta["base_model_relation"] = RELATIONS[card.tool]
    meta["library_name"] = card.library
    base_card = next((p for p in parents if p.name == card.parent), None)
    if base_card is not None and base_card.pipeline_tag:
        meta["pipeline_tag"] = base_card.pipeline_tag
    meta["tags"] = list(TAGS[card.tool])
    meta["hubmerge"] = block

    lines = [BEGIN, f"# {title}", "", card.summary + f" Made with [hubmerge]({PROJECT_URL}).", "",
             "## Sources", "", "| model | role | revision | license |", "|---|---|---|---|"]
    licenses = {p.name: p.license for p in parents}
    for s in card.sources:
        revision = s.revision if s.is_hub else None
        cells = [source_link(s.name, revision, endpoint), card.roles.get(s.name, "model"),
                 f"`{revision[:12]}`" if revision else "local", licenses.get(s.name) or "unknown"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if decision.table:
        lines += ["", "The parents do not share one known license, so this card says `license: "
                  f"{decision.metadata['license']}`; check each parent's terms:", "",
                  "| parent | license |", "|---|---|"] + [f"| `{n}` | {lic or 'unknown'} |" for n, lic in decision.table]
    lines += ["", f"## {card.details_title}", ""] + card.details
    if card.notes:
        lines += ["", "Warnings raised while making it:", ""] + [f"- {n}" for n in card.notes]
    lines += ["", "## Lineage", ""]
    if lineage is not None:
        lines += ["```mermaid", lineage.to_mermaid().rstrip(), "```", "", lineage.to_markdown().rstrip()]
    else:
        lines.append("(not available)")
    target = repo_id or "<this repo or folder>"
    lines += ["", "## Recipe", "", "Every Hub model is pinned to the commit it was read at:", "",
              "```yaml", dump_yaml(block["recipe"]).rstrip(), "```", "",
              "## Reproduce", "", "```bash", "pip install hubmerge",
              f"hubmerge reproduce {target} -o {title}   # run the pinned recipe again",
              f"hubmerge verify {target}   # run it and compare with the content hash below", "```", ""]
    if card.digest:
        lines.append(f"Content hash of the tensors: `{card.digest}`.")
    versions = block["versions"]
    lines += [f"Made on {block['device']} with hubmerge {versions['hubmerge']}, torch {versions['torch']}.", "",
              "## Usage", "", "```python"] + [u.replace("{repo}", repo_id or title) for u in card.usage]
    lines += ["```", "", END]
    return front_matter(meta) + "\n" + "\n".join(lines) + "\n"


def tool_card_text(card: ToolCard, *, title: str, parents: list[ParentCard], lineage: Lineage | None,
                   existing: str | None = None, repo_id: str | None = None, endpoint: str | None = None) -> str:
    """The card, merged into ``existing`` (a README whose prose and own metadata are kept) when given."""
    text = render_tool_card(card, title=title, parents=parents, lineage=lineage, repo_id=repo_id, endpoint=endpoint)
    return update_readme(existing, text) if existing else text
