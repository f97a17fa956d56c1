"""Rewriting the model references of a spec document: pinning Hub refs to commit SHAs."""

from __future__ import annotations

import copy
from typing import Any, Callable

from hubmerge.spec.fields import without_legacy_prefix
from hubmerge.spec.model import ModelRef
from hubmerge.spec.parse import parse_ref

RefMap = Callable[[ModelRef], ModelRef]


def _map_ref(value: Any, fn: RefMap) -> Any:
    if isinstance(value, str):
        return str(fn(parse_ref(value)))
    if isinstance(value, dict) and "path" in value:
        new = fn(ModelRef(value["path"], value.get("revision")))
        return {"path": new.path, **({"revision": new.revision} if new.revision else {})}
    if isinstance(value, dict) and "model" in value:
        out = dict(value)
        base = _map_ref(value["model"], fn)
        out["model"] = base
        if value.get("lora") is not None:  # {model: ..., lora: ...}: the adapter is a model reference too
            out["lora"] = _map_ref(value["lora"], fn)
        return out
    return value


def map_model_refs(doc: dict[str, Any], fn: RefMap) -> dict[str, Any]:
    """A copy of a spec document with every model reference passed through ``fn``."""
    doc = copy.deepcopy(doc)

    def models_and_slices(container: dict[str, Any]) -> None:
        for m in container.get("models") or []:
            m["model"] = _map_ref(m["model"], fn)
        for s in container.get("slices") or []:
            if s.get("base_model") is not None:
                s["base_model"] = _map_ref(s["base_model"], fn)
            for src in s.get("sources") or []:
                src["model"] = _map_ref(src["model"], fn)

    from hubmerge.spec.tools import map_tool_refs

    map_tool_refs(doc, lambda raw: _map_ref(raw, fn))  # extract_lora / tokensurgeon recipes
    if doc.get("base_model") is not None:
        doc["base_model"] = _map_ref(doc["base_model"], fn)
    models_and_slices(doc)
    for key in ("experts", "shared_experts"):  # MoE recipes (mergekit-moe)
        for expert in doc.get(key) or []:
            if isinstance(expert, dict) and expert.get("source_model") is not None:
                expert["source_model"] = _map_ref(expert["source_model"], fn)
    for module in (doc.get("modules") or {}).values():
        models_and_slices(module)
    if without_legacy_prefix(doc.get("tokenizer_source")) not in (None, "base", "union", ""):
        doc["tokenizer_source"] = _map_ref(without_legacy_prefix(doc["tokenizer_source"]), fn)
    tokenizer = doc.get("tokenizer") or {}
    if without_legacy_prefix(tokenizer.get("source")) not in (None, "base", "union", ""):
        tokenizer["source"] = _map_ref(without_legacy_prefix(tokenizer["source"]), fn)
    for token in (tokenizer.get("tokens") or {}).values():
        src = (token or {}).get("source")
        if isinstance(src, (str, dict)) and not (isinstance(src, dict) and "kind" in src):
            token["source"] = _map_ref(src, fn)
        elif isinstance(src, dict) and src.get("kind") == "model_token":
            src["model"] = _map_ref(src["model"], fn)
    return doc


def pinned_document(doc: dict[str, Any], pins: dict[str, str]) -> dict[str, Any]:
    """Every Hub model (by repo id) pinned to its SHA; the tracked branch recorded under hubmerge.track."""
    track: dict[str, str] = {}

    def pin(ref: ModelRef) -> ModelRef:
        lora = pin(ref.lora) if ref.lora is not None else None  # model+adapter: both halves pinned
        sha = pins.get(ref.path)
        if sha is None:
            return ModelRef(ref.path, ref.revision, lora)
        if ref.revision != sha:
            track.setdefault(ref.path, ref.revision or "main")
        return ModelRef(ref.path, sha, lora)

    out = map_model_refs(doc, pin)
    if track:
        options = dict(out.get("hubmerge") or {})
        options["track"] = {**track, **(options.get("track") or {})}
        out["hubmerge"] = options
    return out
