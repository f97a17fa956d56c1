"""The model card (README.md) of a merge: Hub metadata, what was merged and how to rebuild it.

Front matter: ``base_model`` (every Hub parent), ``base_model_relation: merge``, tags, the license policy
(inherited when every parent agrees, ``other`` plus a table otherwise, ``hubmerge.license`` overrides),
``library_name``, ``pipeline_tag`` (the base's), and our ``hubmerge:`` block: the recipe pinned to commit
SHAs, the content hash of the output tensors, versions, device class and dtype.

Body, between BEGIN/END markers so a re-push replaces only our section: title and summary, the method and
its paper, the sources table, the lineage graph (Mermaid plus a plain list), the recipe, the commands
that reproduce and verify it, and a transformers snippet.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hubmerge import __version__
from hubmerge.errors import HubmergeError
from hubmerge.output.lineage import Lineage
from hubmerge.sources.hub_model import default_endpoint
from hubmerge.sources.model import ModelSource
from hubmerge.spec.cards import (
    CardInfo,
    card_info,
    find_recipe,
    format_params,
    format_setting,
    recipe_file,
    recipe_parents,
)
from hubmerge.spec.frontmatter import front_matter, split_front_matter
from hubmerge.spec.model import MergeSpec
from hubmerge.spec.pin import pinned_document
from hubmerge.spec.yamlio import dump_yaml

logger = logging.getLogger(__name__)

BEGIN = "<!-- hubmerge:begin -->"
END = "<!-- hubmerge:end -->"
PROJECT_URL = "https://github.com/org/hubmerge"
OTHER = "other"


class MergePlan(Protocol):
    """What the card reads of a merge plan (``hubmerge.merge.plan.MergePlan``)."""

    spec: MergeSpec
    method: Any  # the registered method: name, summary, paper, in_mergekit
    models: list[ModelSource]
    tensors: list[Any]  # planned output tensors (their .dtype)
    config_source: int  # index of the model whose config the output takes


# ---------------------------------------------------------------------------------------------
# What the parents' cards say


@dataclass
class ParentCard:
    """One input model of a merge and its own card."""

    name: str  # Hub repo id or local path, as the recipe names it
    revision: str | None  # pinned commit SHA (Hub) or None (local)
    is_hub: bool
    info: CardInfo
    folder: Path | None = None  # local models: where the merge found it

    @property
    def license(self) -> str | None:
        value = self.info.meta.get("license")
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else None
        return str(value) if isinstance(value, (str, int, float)) and str(value).strip() else None

    @property
    def license_name(self) -> str | None:
        return self.info.meta.get("license_name") if isinstance(self.info.meta.get("license_name"), str) else None

    @property
    def license_link(self) -> str | None:
        return self.info.meta.get("license_link") if isinstance(self.info.meta.get("license_link"), str) else None

    @property
    def pipeline_tag(self) -> str | None:
        tag = self.info.meta.get("pipeline_tag")
        return tag if isinstance(tag, str) and tag else None


def _read_text(model, name: str) -> str | None:
    try:
        data = model.read_file(name)
    except HubmergeError as exc:
        logger.warning("%s: cannot read %s (%s)", model.name, name, exc.message)
        return None
    return data.decode("utf-8", errors="replace") if data is not None else None


def parent_cards(plan: MergePlan) -> list[ParentCard]:
    """The card of every input model (read through the Hub facade or from the local folder), by name."""
    return parent_cards_of(plan.models)


def parent_cards_of(models: list[ModelSource]) -> list[ParentCard]:
    """``parent_cards`` of any opened inputs (a tool job's models)."""
    out: dict[str, ParentCard] = {}
    for m in models:
        if m.name in out:
            continue
        try:
            files = list(m.list_files())
        except HubmergeError:
            files = []
        info = card_info(_read_text(m, "README.md"), files, source=f"{m.name}/README.md")
        if find_recipe(info) is None and recipe_file(files):
            info = card_info(_read_text(m, "README.md"), files, _read_text(m, recipe_file(files)),
                             source=f"{m.name}/README.md")
        folder = None if m.is_hub else getattr(m.reader, "root", None)
        out[m.name] = ParentCard(m.name, m.revision if m.is_hub else None, m.is_hub, info,
                                 Path(folder) if folder is not None else None)
    return list(out.values())


@dataclass
class LicenseDecision:
    metadata: dict[str, str]  # license (+ license_name/license_link when inherited as "other")
    table: list[tuple[str, str | None]]  # (parent, its license) when the parents do not all agree
    mixed: bool  # parents differ or some are unknown


def decide_license(override: str | None, parents: list[ParentCard]) -> LicenseDecision:
    """All parents agree on one known license: inherit it (with license_name/link for a shared 'other').
    Otherwise 'other' plus a table of the parents' licenses. An explicit override always wins."""
    licenses = [(p.name, p.license) for p in parents]
    known = {lic for _, lic in licenses if lic is not None}
    if parents and len(known) == 1 and all(lic is not None for _, lic in licenses):
        lic = next(iter(known))
        meta = {"license": lic}
        agree = True
        if lic == OTHER:  # custom licenses: the same only if they name the same one
            names = {p.license_name for p in parents}
            links = {p.license_link for p in parents}
            agree = len(names) == 1 and len(links) == 1
            if agree and None not in names:
                meta["license_name"] = next(iter(names))
            if agree and None not in links:
                meta["license_link"] = next(iter(links))
        if agree:
            return LicenseDecision({"license": override} if override else meta, [], False)
    return LicenseDecision({"license": override or OTHER}, licenses, True)


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
    parents = parent_cards(plan) if parents is None else parents
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


def license_summary(table: list[tuple[str, str | None]]) -> str:
    known = {lic for _, lic in table if lic}
    unknown = [name for name, lic in table if not lic]
    parts = []
    if len(known) > 1:
        parts.append("differ (" + ", ".join(f"{n}: {lic}" for n, lic in table if lic) + ")")
    if unknown:
        parts.append("are unknown for " + ", ".join(unknown))
    return " and ".join(parts) or "are unknown"


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


def render_card(plan: MergePlan, digest: str | None, *, title: str, device: str = "cpu",
                repo_id: str | None = None, endpoint: str | None = None, parents: list[ParentCard] | None = None,
                lineage: Lineage | None = None, warn: bool = True) -> str:
    """The whole README.md: front matter plus our delimited section. ``lineage``: the family tree to draw
    (``hubmerge.hub.lineage`` walks it); without one the section says it is not available."""
    endpoint = (endpoint or default_endpoint()).rstrip("/")
    parents = parent_cards(plan) if parents is None else parents
    meta = card_metadata(plan, digest, device=device, parents=parents, warn=warn)
    block = meta["hubmerge"]
    recipe = block["recipe"]
    spec = plan.spec
    by_name = {p.name: p for p in parents}
    sources = recipe_parents(recipe)

    lines = [BEGIN, f"# {title}", ""]
    if getattr(plan, "kind", "merge") == "moe":  # a mixture of experts: its experts, prompts and router
        from hubmerge.output.moe_card import moe_sections

        lines += moe_sections(plan, by_name, endpoint, link=source_link, project_url=PROJECT_URL)
    else:
        lines += _merge_sections(plan, recipe, sources, by_name, endpoint)

    decision = decide_license(spec.hubmerge.license, parents)
    if decision.table:
        lines += ["", "## License", ""]
        if spec.hubmerge.license:
            lines.append(f"The license `{spec.hubmerge.license}` was set in the recipe. The parents' licenses:")
        else:
            lines.append("The parents do not share one known license, so this card says `license: other`. "
                         "Check each parent's terms before using or redistributing this model:")
        lines += ["", "| parent | license |", "|---|---|"]
        lines += [f"| `{name}` | {lic or 'unknown'} |" for name, lic in decision.table]

    lines += ["", "## Lineage", ""]
    if lineage is not None:
        lines += ["```mermaid", lineage.to_mermaid().rstrip(), "```", "", lineage.to_markdown().rstrip()]
    else:
        lines.append("(not available)")

    lines += ["", "## Recipe", "", "Every Hub model is pinned to the commit it was merged from:", "",
              "```yaml", dump_yaml(recipe).rstrip(), "```", ""]
    target = repo_id or "<this repo or folder>"
    commands = [(f"hubmerge reproduce {target} -o {title}", "run the pinned recipe again"),
                (f"hubmerge verify {target}", "re-merge, compare with the content hash below")]
    width = max(len(c) for c, _ in commands) + 2
    lines += ["## Reproduce", "", "```bash", "pip install hubmerge"]
    lines += [f"{c:<{width}}# {why}" for c, why in commands] + ["```", ""]
    if digest:
        lines.append(f"Content hash of the merged tensors (independent of sharding): `{digest}`.")
    else:
        lines.append("Content hash: not computed (this card was generated from the recipe without merging).")
    versions = block["versions"]
    lines += [f"Merged on {block['device']} in {block['dtype'] or 'the input dtype'} with hubmerge "
              f"{versions['hubmerge']}, torch {versions['torch']}, safetensors {versions['safetensors']}.", ""]
    model_id = repo_id or title
    lines += ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f'model_id = "{model_id}"', "tokenizer = AutoTokenizer.from_pretrained(model_id)",
              'model = AutoModelForCausalLM.from_pretrained(model_id, torch_dtype="auto")',
              'inputs = tokenizer("The merged model says", return_tensors="pt")',
              "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))", "```", "", END]
    return front_matter(meta) + "\n" + "\n".join(lines) + "\n"


def _merge_sections(plan: MergePlan, recipe: dict[str, Any], sources, by_name: dict[str, ParentCard],
                    endpoint: str) -> list[str]:
    """Summary, method and sources table of a merge's card (an MoE's: ``moe_card``)."""
    spec = plan.spec
    base = next((s for s in sources if "base" in s.roles), None)
    others = [s for s in sources if s is not base]
    lines: list[str] = []
    summary = (f"A **{spec.merge_method}** merge of {len(sources)} model{'s' if len(sources) != 1 else ''}"
               + (f" on top of `{base.path}`" if base is not None else "")
               + f", made with [hubmerge]({PROJECT_URL}).")
    if others:
        summary += " Merged: " + ", ".join(f"`{s.path}`" for s in others) + "."
    lines += [summary, "", "## Method", "", _method_line(plan)]
    shared = recipe.get("parameters")
    if isinstance(shared, dict) and shared:
        lines += ["", "Shared parameters: " + ", ".join(f"`{k}={format_setting(v)}`" for k, v in shared.items())
                  + "."]
    dtype_bits = [f"`dtype: {recipe['dtype']}`" if recipe.get("dtype") else None,
                  f"`out_dtype: {recipe['out_dtype']}`" if recipe.get("out_dtype") else None]
    if any(dtype_bits):
        lines += ["", "Computed in " + " and ".join(b for b in dtype_bits if b) + "."]

    lines += ["", "## Sources", "", "| model | role | revision | license | parameters |", "|---|---|---|---|---|"]
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
    return lines


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
