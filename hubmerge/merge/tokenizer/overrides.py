"""The ``tokenizer.tokens`` section: per-token rules for where an embedding row comes from.

mergekit's grammar, one entry per token text::

    tokens:
      <|im_start|>: {source: org/chat}                                   # the row that model has for it
      <|im_end|>: {source: {kind: model_token, model: org/chat, token: "</s>"}, force: true}
      <|fresh|>: {source: {kind: zero}}                                  # all zeros

``force: true`` uses the rule even in models that already have the token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hubmerge.errors import SpecError
from hubmerge.spec.model import ModelRef
from hubmerge.spec.parse import parse_ref


@dataclass(frozen=True)
class TokenOverride:
    token: str
    kind: str | None  # "model" (the model's row for this token), "model_token", "zero", or None (no source given)
    model: ModelRef | None = None
    source_token: str | None = None  # model_token: the model's token text ...
    source_token_id: int | None = None  # ... or its row index
    force: bool = False
    yaml_path: str = ""


def _model_ref(value: Any, path: str) -> ModelRef:
    if isinstance(value, str):
        return parse_ref(value, path)
    if isinstance(value, dict) and isinstance(value.get("model"), str):  # {model: ..., lora: ...} dict form
        return parse_ref(value["model"], f"{path}.model")
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return ModelRef(value["path"], value.get("revision"))
    raise SpecError(f"expected a model reference, got {value!r}", path=path)


def parse_overrides(tokens: dict[str, Any] | None) -> list[TokenOverride]:
    out: list[TokenOverride] = []
    for token, entry in (tokens or {}).items():
        path = f"tokenizer.tokens.{token}"
        entry = entry or {}
        if not isinstance(entry, dict):
            raise SpecError(f"expected a mapping with 'source' and/or 'force', got {entry!r}", path=path)
        force = bool(entry.get("force", False))
        source = entry.get("source")
        if source is None:
            out.append(TokenOverride(str(token), None, force=force, yaml_path=path))
            continue
        kind = source.get("kind") if isinstance(source, dict) else None
        if kind == "zero":
            out.append(TokenOverride(str(token), "zero", force=force, yaml_path=path))
        elif kind == "model_token":
            has_text, has_id = source.get("token") is not None, source.get("token_id") is not None
            if has_text == has_id:
                raise SpecError("a model_token source needs exactly one of 'token' or 'token_id'",
                                path=f"{path}.source",
                                hint="e.g. {kind: model_token, model: org/chat, token: '</s>'}")
            out.append(TokenOverride(str(token), "model_token", _model_ref(source["model"], f"{path}.source.model"),
                                     source_token=source.get("token"), source_token_id=source.get("token_id"),
                                     force=force, yaml_path=path))
        elif kind is None:
            out.append(TokenOverride(str(token), "model", _model_ref(source, f"{path}.source"), force=force,
                                     yaml_path=path))
        else:
            raise SpecError(f"unknown token source kind {kind!r}", path=f"{path}.source.kind",
                            hint="use 'zero', 'model_token', or give a model reference")
    return out
