"""Mixture-of-experts recipes (mergekit-moe's YAML): parse strictly into typed dataclasses.

A recipe names a dense ``base_model`` and ``experts`` fine-tuned from it; the output is one MoE model whose
attention, norms and embeddings are the base's, whose MLPs are the experts', with a router ("gate") per
layer initialised from the experts' prompts. Keys are mergekit-moe 0.1.5's plus ``tokenizer_source`` /
``tokenizer``, ``chat_template`` and our ``hubmerge:`` block. Unknown keys and bad values are errors
naming the YAML path; what needs the models (architectures, shapes) is checked when planning.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from hubmerge.errors import SpecError
from hubmerge.spec.fields import dtype_name, hubmerge_options, ref_from_yaml, tokenizer_source_of
from hubmerge.spec.model import HubmergeOptions, ModelRef, TokenizerSpec
from hubmerge.spec.schema import did_you_mean, spec_schema, validate_against_schema

logger = logging.getLogger(__name__)

# "hidden" takes each layer's input at the prompts' last token; "hidden_avg" / "hidden_last" are the spellings
# mergekit-moe 0.1.5 also accepts (mean over the sequence / last token, the same as "hidden").
GATE_MODES = ("hidden", "cheap_embed", "random", "uniform_random")
LEGACY_GATE_MODES = ("hidden_avg", "hidden_last")
PROMPTED_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed")

# Output families in mergekit-moe's order, with the names its ``architecture`` key is matched against (a
# case-insensitive prefix of the name selects a family, so ``qwen`` leaves both Qwen families in play).
FAMILIES: dict[str, str] = {"mixtral": "Mixtral", "deepseek": "DeepSeek MoE", "qwen2_moe": "Qwen MoE",
                            "qwen3_moe": "Qwen3 MoE"}
FAMILY_ALIASES = {"deepseek_moe": "deepseek", "qwen_moe": "qwen2_moe", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe"}

MOE_KEYS = ("base_model", "experts", "shared_experts", "gate_mode", "dtype", "experts_per_token", "architecture",
            "tokenizer_source", "tokenizer", "chat_template", "hubmerge")


@dataclass(frozen=True)
class ExpertSpec:
    """One expert (or shared expert): a dense model whose MLPs become one expert of every layer."""

    source_model: ModelRef
    positive_prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    noise_scale: float | None = None  # gaussian noise added to its MLP weights (seeded per tensor)
    residual_scale: float | None = None  # multiplies its down projection
    yaml_path: str = ""


@dataclass(frozen=True)
class MoESpec:
    base_model: ModelRef
    experts: tuple[ExpertSpec, ...]
    shared_experts: tuple[ExpertSpec, ...] = ()
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    families: tuple[str, ...] = tuple(FAMILIES)  # the output families ``architecture`` leaves in play
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = None
    hubmerge: HubmergeOptions = field(default_factory=HubmergeOptions)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # What generic code reads from any recipe (cards, commit messages, multi-stage files).
    merge_method = "moe"
    name = None
    out_dtype = None

    @property
    def all_experts(self) -> tuple[ExpertSpec, ...]:
        return self.experts + self.shared_experts

    def referenced_models(self) -> list[ModelRef]:
        """Base first, then experts and shared experts in recipe order, de-duplicated."""
        seen: dict[ModelRef, None] = {self.base_model: None}
        for e in self.all_experts:
            seen.setdefault(e.source_model, None)
        tk = self.tokenizer
        if tk is not None and isinstance(tk.source, ModelRef):
            seen.setdefault(tk.source, None)
        return list(seen)


def is_moe_spec(spec: Any) -> bool:
    """A parsed MoE recipe (rather than a merge spec or a tool recipe)."""
    return isinstance(spec, MoESpec)


def is_moe_document(document: Any) -> bool:
    """A mergekit-moe recipe: it lists ``experts`` and names no ``merge_method``."""
    return isinstance(document, dict) and "experts" in document and "merge_method" not in document


@lru_cache(maxsize=1)
def moe_schema() -> dict[str, Any]:
    """The recipe's JSON Schema: our spec schema's model references, dtype, tokenizer and ``hubmerge:``
    definitions, with mergekit-moe's keys."""
    base = spec_schema()
    shared = {k: copy.deepcopy(base["properties"][k])
              for k in ("dtype", "tokenizer_source", "tokenizer", "chat_template", "hubmerge")}
    prompts = {"type": ["array", "null"], "items": {"type": "string"}}
    expert = {"type": "object", "additionalProperties": False, "required": ["source_model"],
              "properties": {"source_model": {"$ref": "#/$defs/model_ref"}, "positive_prompts": prompts,
                             "negative_prompts": prompts, "noise_scale": {"type": ["number", "null"]},
                             "residual_scale": {"type": ["number", "null"]}}}
    return {
        "$schema": base["$schema"], "title": "hubmerge MoE recipe (mergekit-moe compatible)", "type": "object",
        "additionalProperties": False, "required": ["base_model", "experts"],
        "properties": {
            "base_model": {"$ref": "#/$defs/model_ref"},
            "experts": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/moe_expert"}},
            "shared_experts": {"type": ["array", "null"], "items": {"$ref": "#/$defs/moe_expert"}},
            "gate_mode": {"enum": list(GATE_MODES + LEGACY_GATE_MODES)},
            "experts_per_token": {"type": "integer", "minimum": 1},
            "architecture": {"type": ["string", "null"], "minLength": 1},
            **shared,
        },
        "$defs": {**copy.deepcopy(base["$defs"]), "moe_expert": expert},
    }


def resolve_families(value: str | None, path: str = "architecture") -> tuple[str, ...]:
    """The output families an ``architecture`` value selects: our ids (``mixtral``, ``deepseek``,
    ``qwen2_moe``, ``qwen3_moe``) or, as mergekit-moe matches them, a prefix of a family's name."""
    if value is None:
        return tuple(FAMILIES)
    text = value.strip().lower()
    text = FAMILY_ALIASES.get(text, text)
    if text in FAMILIES:
        return (text,)
    found = tuple(f for f, name in FAMILIES.items() if text and name.lower().startswith(text))
    if not found:
        suggestion = did_you_mean(text, list(FAMILIES) + list(FAMILY_ALIASES))
        raise SpecError(f"unknown output family {value!r}", path=path,
                        hint=(f"did you mean '{FAMILY_ALIASES.get(suggestion, suggestion)}'? " if suggestion else "")
                        + "one of " + ", ".join(FAMILIES) + " (or mergekit-moe's names: "
                        + ", ".join(FAMILIES.values()) + ")")
    return found


def parse_moe(document: dict[str, Any], *, source: str = "recipe") -> MoESpec:
    """A schema-checked, typed MoE recipe. Checks that need no model: counts, prompts, families."""
    validate_against_schema(document, source=source, schema=moe_schema())
    experts = tuple(_expert(e, f"experts[{i}]") for i, e in enumerate(document["experts"]))
    shared = tuple(_expert(e, f"shared_experts[{i}]") for i, e in enumerate(document.get("shared_experts") or ()))
    gate_mode = document.get("gate_mode", "hidden")
    per_token = document.get("experts_per_token", 2)
    if per_token > len(experts):
        raise SpecError(f"{per_token} experts per token, but the recipe has only {len(experts)} expert"
                        + ("s" if len(experts) != 1 else ""), path="experts_per_token",
                        hint="each token is routed to experts_per_token of the experts; lower it or add experts")
    tokenizer = _tokenizer(document)
    spec = MoESpec(
        base_model=ref_from_yaml(document["base_model"], "base_model"),
        experts=experts,
        shared_experts=shared,
        gate_mode=gate_mode,
        dtype=dtype_name(document.get("dtype")),
        experts_per_token=per_token,
        families=resolve_families(document.get("architecture")),
        tokenizer=tokenizer,
        chat_template=document.get("chat_template"),
        hubmerge=hubmerge_options(document.get("hubmerge") or {}),
        raw=document,
    )
    _check_prompts(spec)
    return spec


def _expert(doc: dict[str, Any], path: str) -> ExpertSpec:
    return ExpertSpec(ref_from_yaml(doc["source_model"], f"{path}.source_model"), tuple(doc.get("positive_prompts") or ()),
                      tuple(doc.get("negative_prompts") or ()), _float(doc.get("noise_scale")),
                      _float(doc.get("residual_scale")), path)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _tokenizer(document: dict[str, Any]) -> TokenizerSpec | None:
    """Only a tokenizer for the base's vocabulary fits: the MoE takes the base's embeddings as they are."""
    if document.get("tokenizer") is not None and document.get("tokenizer_source") is not None:
        raise SpecError("give either 'tokenizer' or 'tokenizer_source', not both", path="tokenizer_source")
    if document.get("tokenizer_source") is not None:
        value, path = document["tokenizer_source"], "tokenizer_source"
    elif document.get("tokenizer") is not None:
        section = document["tokenizer"]
        for key in ("tokens", "pad_to_multiple_of"):
            if section.get(key):
                raise SpecError("an MoE keeps the base's embeddings, so its tokenizer cannot add tokens or padding",
                                path=f"tokenizer.{key}", hint="remove it; use tokenizer_source: base or a model")
        value, path = section.get("source", "base"), "tokenizer.source"
    else:
        return None
    if value == "union":
        raise SpecError("'union' is not available for an MoE: it keeps the base's embeddings as they are",
                        path=path, hint="use 'base' or one of the models, whose vocabulary must be the base's")
    return TokenizerSpec(source=tokenizer_source_of(value, path))


def _check_prompts(spec: MoESpec) -> None:
    """mergekit-moe's checks: prompt modes need prompts for every expert, and not the same prompts for all."""
    for e in spec.shared_experts:
        if bool(e.positive_prompts) != bool(spec.shared_experts[0].positive_prompts):
            raise SpecError("give positive_prompts to every shared expert or to none", path=f"{e.yaml_path}.positive_prompts")
    if spec.gate_mode not in PROMPTED_MODES:
        return
    for e in spec.experts:
        if not e.positive_prompts:
            raise SpecError(f"gate_mode '{spec.gate_mode}' needs prompts for every expert, and this one has none",
                            path=f"{e.yaml_path}.positive_prompts",
                            hint="list example prompts that should be routed to this expert, or use gate_mode: random")
    first = (spec.experts[0].positive_prompts, spec.experts[0].negative_prompts)
    if len(spec.experts) > 1 and all((e.positive_prompts, e.negative_prompts) == first for e in spec.experts[1:]):
        raise SpecError("every expert has the same prompts, so every router row would be the same",
                        path="experts", hint="give each expert prompts for what it should handle")
    if len({e.source_model for e in spec.experts}) == 1 and len(spec.experts) > 1:
        logger.warning("every expert is %s: the MoE computes what that one model does, at a higher cost "
                       "(useful only as a starting point for training)", spec.experts[0].source_model)
