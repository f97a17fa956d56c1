"""Recipes for mergekit's other tools, in YAML like a merge spec: LoRA extraction and tokenizer transplant.

A recipe is a mapping with one tool key and our usual ``hubmerge:`` block, so a repo README can hold it
(``hubmerge: {recipe: ...}``) and ``push``, ``check``, ``sync`` and ``reproduce`` work on it::

    extract_lora:                     # mergekit-extract-lora
      model: org/finetune@main
      base_model: org/base
      rank: 32                        # the most a module keeps (mergekit: --max-rank)
      sv_epsilon: 0.0                 # > 0: keep only singular values above it (rank per module)
      embed_lora: false               # decompose embeddings too (else saved in full when changed)
      save_modules: [lm_head]         # saved in full (modules_to_save)
      include: []                     # module-name regexes; exclude wins
      exclude: []
      distribute_scale: true          # sqrt(s) on both factors (else all of s on A)
      dtype: null                     # adapter dtype (default: the fine-tune's)
    hubmerge: {target: you/adapter}

    tokensurgeon:                     # mergekit-tokensurgeon
      model: org/model
      donor: org/donor                # whose tokenizer the output gets
      method: omp                     # omp | subword | mean | zero
      k: 64                           # atoms per token (omp)
      subword_method: mean            # mean | sum | weighted_mean | first_last (subword)
    hubmerge: {target: you/model-new-vocab}

Structure is checked by a JSON Schema (sharing the merge schema's model references and ``hubmerge:``
block), so unknown keys and wrong types are errors naming their YAML path, with a suggestion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

from hubmerge.spec.model import HubmergeOptions, ModelRef
from hubmerge.spec.schema import spec_schema

EXTRACT_LORA = "extract_lora"
TOKENSURGEON = "tokensurgeon"
TOOLS = (EXTRACT_LORA, TOKENSURGEON)
# Where each tool's recipe names models, and the role each plays (cards, lineage, pinning).
MODEL_KEYS = {EXTRACT_LORA: (("model", "fine-tune"), ("base_model", "base")),
              TOKENSURGEON: (("model", "model"), ("donor", "donor"))}
APPROXIMATIONS = ("omp", "subword", "mean", "zero")  # = merge.token_approx.METHODS (spec/ imports nothing above)
SUBWORD_METHODS = ("mean", "sum", "weighted_mean", "first_last")
DEFAULT_RANK = 128  # mergekit-extract-lora's --max-rank default
DEFAULT_K = 64


@dataclass(frozen=True)
class ExtractLoraSpec:
    model: ModelRef  # the fine-tune
    base_model: ModelRef
    rank: int = DEFAULT_RANK
    sv_epsilon: float = 0.0
    embed_lora: bool = False
    save_modules: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    distribute_scale: bool = True
    dtype: str | None = None
    hubmerge: HubmergeOptions = field(default_factory=HubmergeOptions)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    tool = EXTRACT_LORA

    def referenced_models(self) -> list[ModelRef]:
        return [self.base_model, self.model]


@dataclass(frozen=True)
class TokensurgeonSpec:
    model: ModelRef
    donor: ModelRef
    method: str = "omp"
    k: int = DEFAULT_K
    subword_method: str = "mean"
    hubmerge: HubmergeOptions = field(default_factory=HubmergeOptions)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    tool = TOKENSURGEON

    def referenced_models(self) -> list[ModelRef]:
        return [self.model, self.donor]


ToolSpec = Union[ExtractLoraSpec, TokensurgeonSpec]


def tool_of(document: Any) -> str | None:
    """The tool a recipe document is for, or None for a merge spec."""
    if isinstance(document, dict):
        for tool in TOOLS:
            if tool in document:
                return tool
    return None


def is_tool_spec(spec: Any) -> bool:
    return isinstance(spec, (ExtractLoraSpec, TokensurgeonSpec))


def tool_schema(tool: str) -> dict[str, Any]:
    main = spec_schema()
    strings = {"type": "array", "items": {"type": "string", "minLength": 1}}
    ref = {"$ref": "#/$defs/model_ref"}
    if tool == EXTRACT_LORA:
        body = {"model": ref, "base_model": ref, "rank": {"type": "integer", "minimum": 1},
                "sv_epsilon": {"type": "number", "minimum": 0}, "embed_lora": {"type": "boolean"},
                "save_modules": strings, "include": strings, "exclude": strings,
                "distribute_scale": {"type": "boolean"}, "dtype": main["properties"]["dtype"]}
        required = ["model", "base_model"]
    else:
        body = {"model": ref, "donor": ref, "method": {"enum": list(APPROXIMATIONS)},
                "k": {"type": "integer", "minimum": 1}, "subword_method": {"enum": list(SUBWORD_METHODS)}}
        required = ["model", "donor"]
    return {"$schema": main["$schema"], "type": "object", "additionalProperties": False, "required": [tool],
            "properties": {tool: {"type": "object", "additionalProperties": False, "required": required,
                                  "properties": body},
                           "hubmerge": main["properties"]["hubmerge"]},
            "$defs": main["$defs"]}


def map_tool_refs(document: dict[str, Any], fn: Callable[[Any], Any]) -> None:
    """Pass every model reference of a tool recipe (in place) through ``fn`` (raw value -> raw value)."""
    tool = tool_of(document)
    body = document.get(tool) if tool else None
    if not isinstance(body, dict):
        return
    for key, _ in MODEL_KEYS[tool]:
        if body.get(key) is not None:
            body[key] = fn(body[key])


def tool_parents(document: dict[str, Any]) -> list[tuple[Any, str]]:
    """(raw model reference, role) of every model a tool recipe names."""
    tool = tool_of(document)
    body = document.get(tool) if tool else None
    if not isinstance(body, dict):
        return []
    return [(body[key], role) for key, role in MODEL_KEYS[tool] if body.get(key) is not None]


def recipe_document(tool: str, fields: dict[str, Any], hubmerge: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recipe document from command-line values (None and empty values left out)."""
    body = {k: v for k, v in fields.items() if v is not None and v != [] and v != ()}
    doc: dict[str, Any] = {tool: body}
    if hubmerge:
        doc["hubmerge"] = hubmerge
    return doc
