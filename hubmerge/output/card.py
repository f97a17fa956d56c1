"""The model card (README.md) of a merge: Hub metadata, what was merged and how to rebuild it.

Front matter: ``base_model`` (every Hub parent), ``base_model_relation: merge``, tags, the license policy
(inherited when every parent agrees, ``other`` plus a table otherwise, ``hubmerge.license`` overrides),
``library_name``, ``pipeline_tag`` (the base's), and our ``hubmerge:`` block: the recipe pinned to commit
SHAs, the content hash of the output tensors, versions, device class and dtype.

Body, between BEGIN/END markers so a re-push replaces only our section: ``card_template.md`` filled by one
small helper per section (title and summary, the method and its paper, the sources table, the license
table when the parents disagree, the lineage graph as Mermaid plus a plain list, the recipe, the commands
that reproduce and verify it, a transformers snippet). The parents' cards and the license policy are in
``parents.py``.
"""

from __future__ import annotations

import logging
import platform
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any, Protocol

from hubmerge import __version__
from hubmerge.output.lineage import Lineage
from hubmerge.output.parents import LicenseDecision, ParentCard, decide_license, license_summary, parent_cards
from hubmerge.sources.hub_model import default_endpoint
from hubmerge.sources.model import ModelSource
from hubmerge.spec.cards import RecipeParent, format_params, format_setting, recipe_parents
from hubmerge.spec.frontmatter import front_matter, split_front_matter
from hubmerge.spec.model import MergeSpec
from hubmerge.spec.pin import pinned_document
from hubmerge.spec.yamlio import dump_yaml

logger = logging.getLogger(__name__)

BEGIN = "<!-- hubmerge:begin -->"
END = "<!-- hubmerge:end -->"
PROJECT_URL = "https://github.com/org/hubmerge"


class MergePlan(Protocol):
    """What the card reads of a merge plan (``hubmerge.merge.plan.MergePlan``)."""

    spec: MergeSpec
    method: Any  # the registered method: name, summary, paper, in_mergekit
    models: list[ModelSource]
    tensors: list[Any]  # planned output tensors (their .dtype)
    config_source: int  # index of the model whose config the output takes


# ---------------------------------------------------------------------------------------------
# Metadata


def pinned_recipe_block(plan: MergePlan, digest: str | None, *, device: str = "cpu") -> dict[str, Any]:
    """The recipe with every Hub source pinned to its commit SHA, plus what is needed to verify it."""
    return pinned_block(plan.spec.raw, plan.models, digest, dtype=plan.tensors[0].dtype if plan.tensors else None,
                        device=device)


def pinned_block(raw: dict[str, Any], models: list[ModelSource], digest: str | None, *, dtype: str | None,
                 device: str = "cpu") -> dict[str, Any]:
    """``raw`` (a recipe as written) with every Hub model and adapter among ``models`` pinned, plus the
    content hash, dtype, device class and versions."""
    import safetensors
    import torch

    pins = {m.name: m.revision for m in models if m.is_hub and m.revision}
    adapters = [m.extra["adapter"] for m in models if m.extra.get("adapter") is not None]
    pins.update({a.name: a.revision for a in adapters if a.is_hub and a.revision})
    recipe = pinned_document(raw, pins)
    options = dict(recipe.get("hubmerge") or {})
    for recorded in ("pinned", "content_hash", "versions", "device", "generated"):
        options.pop(recorded, None)
    if options:
        recipe["hubmerge"] = options
    else:
        recipe.pop("hubmerge", None)
    return {
        "recipe": recipe,
        "content_hash": digest,
        "dtype": dtype,
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "versions": {"hubmerge": __version__, "torch": torch.__version__.split("+")[0],
                     "safetensors": safetensors.__version__, "python": platform.python_version()},
    }


def _adapters(plan: MergePlan) -> list:
    """The LoRA adapters folded into inputs (``model+adapter``), which the recipe pins like models."""
    return [m.extra["adapter"] for m in plan.models if m.extra.get("adapter") is not None]


def _base_parent(plan: MergePlan, parents: list[ParentCard]) -> ParentCard | None:
    by_name = {p.name: p for p in parents}
    spec = plan.spec
    if spec.base_model is not None and spec.base_model.path in by_name:
        return by_name[spec.base_model.path]
    if plan.models:
        return by_name.get(plan.models[plan.config_source].name)
    return None


def card_metadata(plan: MergePlan, digest: str | None, *, device: str = "cpu",
                  parents: list[ParentCard] | None = None, warn: bool = True) -> dict[str, Any]:
    spec = plan.spec
    parents = parent_cards(plan.models) if parents is None else parents
    hub_ids = list(dict.fromkeys([m.name for m in plan.models if m.is_hub]
                                 + [a.name for a in _adapters(plan) if a.is_hub]))  # as mergekit lists LoRAs
    tags = ["merge", "hubmerge", spec.merge_method]
    if plan.method.in_mergekit:
        tags.insert(1, "mergekit")
    decision = decide_license(spec.hubmerge.license, parents)
    if decision.mixed and not spec.hubmerge.license and warn:
        logger.warning("the parents' licenses %s; the card says 'license: other' with a table of them. "
                       "Set 'hubmerge: {license: ...}' in the spec once you know the license that applies",
                       license_summary(decision.table))
    meta: dict[str, Any] = dict(decision.metadata)
    if hub_ids:
        meta["base_model"] = hub_ids
        meta["base_model_relation"] = "merge"
    meta["library_name"] = "transformers"
    base = _base_parent(plan, parents)
    if base is not None and base.pipeline_tag:
        meta["pipeline_tag"] = base.pipeline_tag
    meta["tags"] = list(dict.fromkeys(tags))
    meta["hubmerge"] = pinned_recipe_block(plan, digest, device=device)
    return meta


# ---------------------------------------------------------------------------------------------
# Body


def source_link(name: str, revision: str | None, endpoint: str) -> str:
    if revision:
        return f"[{name}]({endpoint}/{name}/tree/{revision})"
    return f"`{name}`"


def _method_line(plan: MergePlan) -> str:
    method = plan.method
    text = f"**{method.name}**"
    if method.summary:
        text += f": {method.summary.rstrip('.')}."
    if method.paper:
        label = "paper" if "arxiv.org" in method.paper else "reference"
        text += f" ([{label}]({method.paper}))"
    return text


@lru_cache(maxsize=1)
def card_template() -> Template:
    """The body of our section (``card_template.md``); each ``${name}`` is filled by a section helper below."""
    return Template(resources.files("hubmerge.output").joinpath("card_template.md").read_text(encoding="utf-8"))


def render_card(plan: MergePlan, digest: str | None, *, title: str, device: str = "cpu",
                repo_id: str | None = None, endpoint: str | None = None, parents: list[ParentCard] | None = None,
                lineage: Lineage | None = None, warn: bool = True) -> str:
    """The whole README.md: front matter plus our delimited section. ``lineage``: the family tree to draw
    (``hubmerge.hub.lineage`` walks it); without one the section says it is not available."""
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    parents = parent_cards(plan.models) if parents is None else parents
    meta = card_metadata(plan, digest, device=device, parents=parents, warn=warn)
    block = meta["hubmerge"]
    recipe = block["recipe"]
    sources = recipe_parents(recipe)
    if getattr(plan, "kind", "merge") == "moe":  # a mixture of experts: its experts, prompts and router
        from hubmerge.output.moe_card import moe_sections

        head = "\n".join(moe_sections(plan, {p.name: p for p in parents}, endpoint, link=source_link,
                                       project_url=PROJECT_URL))
    else:
        head = merge_sections(plan, recipe, sources, parents, endpoint)
    body = card_template().substitute(
        begin=BEGIN, end=END, title=title, head=head,
        license=license_section(decide_license(plan.spec.hubmerge.license, parents), plan.spec.hubmerge.license),
        lineage=lineage_section(lineage), recipe=dump_yaml(recipe).rstrip(), commands=reproduce_commands(repo_id, title),
        content_hash=content_hash_line(digest), merged_on=merged_on_line(block), model_id=repo_id or title)
    return front_matter(meta) + "\n" + body


# Section helpers: each returns its part of the body, without a trailing newline.


def merge_sections(plan: MergePlan, recipe: dict[str, Any], sources: list[RecipeParent], parents: list[ParentCard],
                   endpoint: str) -> str:
    """The head of a merge's card: summary, method, sources (an MoE's is ``moe_card.moe_sections``)."""
    return "\n\n".join([summary_section(plan.spec.merge_method, sources), "## Method", method_section(plan, recipe),
                        "## Sources", sources_section(sources, parents, endpoint)])


def summary_section(method: str, sources: list[RecipeParent]) -> str:
    base = next((s for s in sources if "base" in s.roles), None)
    others = [s for s in sources if s is not base]
    text = (f"A **{method}** merge of {len(sources)} model{'s' if len(sources) != 1 else ''}"
            + (f" on top of `{base.path}`" if base is not None else "")
            + f", made with [hubmerge]({PROJECT_URL}).")
    if others:
        text += " Merged: " + ", ".join(f"`{s.path}`" for s in others) + "."
    return text


def method_section(plan: MergePlan, recipe: dict[str, Any]) -> str:
    """The method and its paper, the shared parameters and the dtypes computed in."""
    parts = [_method_line(plan)]
    shared = recipe.get("parameters")
    if isinstance(shared, dict) and shared:
        parts.append("Shared parameters: " + ", ".join(f"`{k}={format_setting(v)}`" for k, v in shared.items())
                     + ".")
    dtype_bits = [f"`dtype: {recipe['dtype']}`" if recipe.get("dtype") else None,
                  f"`out_dtype: {recipe['out_dtype']}`" if recipe.get("out_dtype") else None]
    if any(dtype_bits):
        parts.append("Computed in " + " and ".join(b for b in dtype_bits if b) + ".")
    return "\n\n".join(parts)


def sources_section(sources: list[RecipeParent], parents: list[ParentCard], endpoint: str) -> str:
    """A table of every model the recipe names: role, pinned revision, license, parameters."""
    by_name = {p.name: p for p in parents}
    lines = ["| model | role | revision | license | parameters |", "|---|---|---|---|---|"]
    for s in sources:
        parent = by_name.get(s.path)
        is_hub = parent.is_hub if parent is not None else bool(s.revision)
        revision = s.revision if is_hub else None
        role = next((r for r in ("base", "slice", "model", "adapter") if r in s.roles), "model")
        if role == "adapter":
            role = "LoRA adapter (folded into its model)"
        params = format_params(s.params)
        if s.layers:
            params = ", ".join(filter(None, ["layers " + ", ".join(f"{a}-{b}" for a, b in s.layers), params]))
        license_ = (parent.license if parent is not None else None) or "unknown"
        cells = [source_link(s.path, revision, endpoint), role, f"`{revision[:12]}`" if revision else "local", license_,
                 params or "—"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def license_section(decision: LicenseDecision, override: str | None) -> str:
    """The parents' licenses when they do not agree (or the recipe set one); empty otherwise."""
    if not decision.table:
        return ""
    if override:
        intro = f"The license `{override}` was set in the recipe. The parents' licenses:"
    else:
        intro = ("The parents do not share one known license, so this card says `license: other`. "
                 "Check each parent's terms before using or redistributing this model:")
    rows = [f"| `{name}` | {lic or 'unknown'} |" for name, lic in decision.table]
    return "\n\n" + "\n".join(["## License", "", intro, "", "| parent | license |", "|---|---|", *rows])


def lineage_section(lineage: Lineage | None) -> str:
    if lineage is None:
        return "(not available)"
    return "```mermaid\n" + lineage.to_mermaid().rstrip() + "\n```\n\n" + lineage.to_markdown().rstrip()


def reproduce_commands(repo_id: str | None, title: str) -> str:
    target = repo_id or "<this repo or folder>"
    commands = [(f"hubmerge reproduce {target} -o {title}", "run the pinned recipe again"),
                (f"hubmerge verify {target}", "re-merge, compare with the content hash below")]
    width = max(len(c) for c, _ in commands) + 2
    return "\n".join(f"{c:<{width}}# {why}" for c, why in commands)


def content_hash_line(digest: str | None) -> str:
    if digest:
        return f"Content hash of the merged tensors (independent of sharding): `{digest}`."
    return "Content hash: not computed (this card was generated from the recipe without merging)."


def merged_on_line(block: dict[str, Any]) -> str:
    versions = block["versions"]
    return (f"Merged on {block['device']} in {block['dtype'] or 'the input dtype'} with hubmerge "
            f"{versions['hubmerge']}, torch {versions['torch']}, safetensors {versions['safetensors']}.")


# ---------------------------------------------------------------------------------------------
# Reading and updating READMEs


OUR_KEYS = ("base_model", "base_model_relation", "library_name", "hubmerge")
USER_WINS = ("license", "license_name", "license_link", "pipeline_tag")  # an existing value is kept


def update_readme(existing: str, generated: str) -> str:
    """Our keys and our delimited section replaced; the user's other keys, tags and prose kept."""
    old_meta, old_body = split_front_matter(existing)
    new_meta, new_body = split_front_matter(generated)
    meta = dict(old_meta)
    recipe = (new_meta.get("hubmerge") or {}).get("recipe") or {}
    explicit_license = bool((recipe.get("hubmerge") or {}).get("license")) if isinstance(recipe, dict) else False
    if explicit_license:
        for key in ("license_name", "license_link"):
            meta.pop(key, None)
    for key in OUR_KEYS:
        meta.pop(key, None)
    for key, value in new_meta.items():
        if key == "tags":
            user_tags = [t for t in (old_meta.get("tags") or []) if t not in value]
            meta["tags"] = list(value) + user_tags
        elif key in USER_WINS and not (key.startswith("license") and explicit_license) and (
                key in old_meta or (key != "pipeline_tag" and "license" in old_meta)):
            continue  # the user's license / pipeline wins over the inherited one (not over the spec's)
        else:
            meta[key] = value
    section = new_body.strip("\n")
    if BEGIN in old_body and END in old_body:
        head, rest = old_body.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        body = head + section + tail
    else:
        body = "\n" + section + "\n" + (("\n" + old_body.strip("\n") + "\n") if old_body.strip() else "")
    return front_matter(meta) + (body if body.startswith("\n") else "\n" + body)
