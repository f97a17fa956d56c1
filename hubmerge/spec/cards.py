"""What a model card says about where the model came from: its recipe and its parents.

A recipe is found, in order of preference, in
  1. our ``hubmerge:`` block (the pinned recipe),
  2. a mergekit-style card's "Configuration" YAML block, or the repo's ``mergekit_config.yml``;
parents come from the recipe, else from the Hub's ``base_model`` metadata (``base_model_relation`` or the
Hub's own inference). Pure functions on text: reading the cards is the caller's business.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from hubmerge.errors import HubmergeError
from hubmerge.spec.frontmatter import split_front_matter
from hubmerge.spec.parse import parse_ref

logger = logging.getLogger(__name__)

RELATIONS = ("merge", "finetune", "adapter", "quantized")
MERGEKIT_CONFIG = "mergekit_config.yml"
MERGEKIT_MOE_CONFIG = "mergekit_moe_config.yml"  # what mergekit-moe leaves beside an MoE (it writes no card)


def recipe_file(files) -> str | None:
    """The mergekit recipe file a model folder or repo holds, if any."""
    return next((f for f in (MERGEKIT_CONFIG, MERGEKIT_MOE_CONFIG) if f in files), None)


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
        parts += [r for r in ("expert", "shared expert") if r in self.roles]  # MoE recipes
        params = self.params
        if weights_only:
            params = {k: v for k, v in params.items() if k in ("weight", "t", "scale")}
        if params:
            parts.append(format_params(params))
        if self.layers:
            parts.append("layers " + ", ".join(f"{a}-{b}" for a, b in self.layers))
        return ", ".join(parts)


def ref_of(value: Any) -> tuple[str, str | None] | None:
    """(path, revision) of a raw model reference, its LoRA adapter left out; None when unreadable."""
    refs = _refs_of(value)
    return refs[0] if refs else None


def _adapter_of(value: Any) -> tuple[str, str | None] | None:
    """(path, revision) of the LoRA adapter a raw model reference folds in (``model+adapter``, ``lora:``)."""
    refs = _refs_of(value)
    return refs[1] if len(refs) > 1 else None


def _refs_of(value: Any) -> list[tuple[str, str | None]]:
    """[model] or [model, adapter] of a raw model reference; [] when unreadable."""
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
        ref = ref_of(raw)
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
    from hubmerge.spec.tools import tool_parents

    for raw, role in tool_parents(recipe):  # extract_lora / tokensurgeon recipes
        add(raw, role)
    if recipe.get("base_model") is not None:
        add(recipe["base_model"], "base")
    container(recipe)
    for key, role in (("experts", "expert"), ("shared_experts", "shared expert")):  # MoE recipes
        for e in recipe.get(key) or []:
            if isinstance(e, dict):
                add(e.get("source_model"), role)
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
    return doc if isinstance(doc, dict) and ("merge_method" in doc or "experts" in doc) else None


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
        tool_links = _tool_links(recipe)
        if tool_links is not None:
            return tool_links
        method = str(recipe.get("merge_method", "moe" if "experts" in recipe else "?"))
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
        ref = ref_of(b)
        if ref is not None:
            out.append(ParentLink(ref[0], ref[1], relation, relation))
    return out


def _tool_links(recipe: dict[str, Any]) -> list[ParentLink] | None:
    """Parents of an ``extract_lora`` / ``tokensurgeon`` recipe's output; None for a merge recipe."""
    from hubmerge.spec.tools import DEFAULT_RANK, EXTRACT_LORA, tool_of

    tool = tool_of(recipe)
    if tool is None:
        return None
    body = recipe.get(tool) if isinstance(recipe.get(tool), dict) else {}
    rank = f"rank <= {body.get('rank', DEFAULT_RANK)}"
    if tool == EXTRACT_LORA and body.get("sv_epsilon"):
        rank += f", sv_epsilon {body['sv_epsilon']}"
    labels = {"base": ("adapter", "adapter of (base)"), "fine-tune": ("extracted", f"LoRA extracted ({rank})"),
              "model": ("finetune", f"tokenizer transplant ({body.get('method', 'omp')})"),
              "donor": ("tokenizer", "tokenizer donor")}
    links = []
    for p in recipe_parents(recipe):
        if p.roles == ["adapter"]:
            links.append(ParentLink(p.path, p.revision, "adapter", "adapter (LoRA, folded in)"))
            continue
        relation, label = labels.get(p.roles[0], ("finetune", p.roles[0]))
        links.append(ParentLink(p.path, p.revision, relation, label))
    return links
