"""The planner's side of tokenizer handling: checks, the output tokenizer, per-tensor alignments.

Kept here so plan.py only calls in at a few points.
"""

from __future__ import annotations

import logging
from typing import Any

from hubmerge.errors import PlanError
from hubmerge.merge.layout import LAYER_RE, input_embedding_name, is_output_embedding
from hubmerge.merge.tokenizer.align import VocabAlignment, plan_alignment, vocabulary_axis
from hubmerge.merge.tokenizer.build import (
    DONOR,
    OutputTokenizer,
    TokenizerFiles,
    build_output_tokenizer,
    config_vocab_size,
)
from hubmerge.merge.tokenizer.chat import resolve_chat_template
from hubmerge.merge.tokenizer.overrides import parse_overrides
from hubmerge.sources.model import ModelSource
from hubmerge.sources.safetensors_format import TensorInfo
from hubmerge.spec.model import MergeSpec, ModelRef

logger = logging.getLogger(__name__)


def vocab_rows(source: ModelSource) -> int | None:
    """Rows of the model's input embedding (from the header), else config.json's vocab_size."""
    name = input_embedding_name(source.tensors)
    if name is not None and source.tensors[name].shape:
        return source.tensors[name].shape[0]
    return config_vocab_size(source.config)


def check_vocab_sizes(spec: MergeSpec, sources: list[ModelSource]) -> None:
    """Without a tokenizer section every input must have the same vocabulary size (mergekit only finds out
    at lm_head, after merging everything before it)."""
    if spec.tokenizer is not None:
        return
    sizes = {s.name: vocab_rows(s) for s in sources}
    known = {n: v for n, v in sizes.items() if v is not None}
    if len(set(known.values())) > 1:
        detail = ", ".join(f"{n} has {v}" for n, v in known.items())
        raise PlanError(f"the models have different vocabulary sizes: {detail}",
                        hint="add 'tokenizer_source: union' (every model's tokens), 'tokenizer_source: base', or a "
                             "'tokenizer:' section, so hubmerge re-indexes the embeddings onto one tokenizer")


def prepare_tokenizer(spec: MergeSpec, refs: list[ModelRef], sources: list[ModelSource],
                      source_ref: ModelRef, *, donor: ModelSource | None = None) -> OutputTokenizer | None:
    """The output tokenizer when the spec asks for one (tokenizer_source / tokenizer section). ``donor``: the
    tokenizer source when it is no input model (``MergeSpec.tokenizer_donor``)."""
    tk = spec.tokenizer
    if tk is None:
        return None
    base = refs.index(spec.base_model) if spec.base_model in refs else 0
    if tk.source in ("base", "union"):
        source: str | int = tk.source
    elif tk.source in refs:
        source = refs.index(tk.source)
    else:
        source = DONOR
    overrides = parse_overrides(tk.tokens)
    pad = tk.pad_to_multiple_of
    tokenizer = build_output_tokenizer(source=source, base=base, models=sources, overrides=overrides,
                                       pad_to_multiple_of=pad, donor=donor)
    logger.info("output tokenizer: %d tokens, %d embedding rows", len(tokenizer.vocab), tokenizer.rows)
    return tokenizer


def chat_template_for(spec: MergeSpec, sources: list[ModelSource]) -> str | None:
    def input_templates() -> list[Any]:
        found = []
        for s in sources:
            files = TokenizerFiles(s)
            try:
                found.append(files.load().chat_template if files.present else None)
            finally:
                files.cleanup()
        return found
    return resolve_chat_template(spec.chat_template, input_templates)


def align_tensor(tokenizer: OutputTokenizer | None, *, tensor: str, inputs: list[tuple[int, TensorInfo]],
                 sources: list[ModelSource], base: int | None, order: list[int]) -> VocabAlignment | None:
    """The alignment for one output tensor, or None when it has no vocabulary axis.

    ``inputs``: (model index, tensor) in group order; ``order[j]``: group position of planned input j.
    """
    if tokenizer is None or LAYER_RE.match(tensor):
        return None
    named = is_output_embedding(tensor) or input_embedding_name([tensor]) == tensor
    axes = []
    for model, info in inputs:
        rows = vocab_rows(sources[model])
        axis = vocabulary_axis(tensor, info.shape, rows, is_embedding=named) if rows else None
        axes.append(axis)
    if all(a is None for a in axes):
        return None
    if any(a is None for a in axes):
        detail = ", ".join(f"{sources[m].name} {list(i.shape)}" for m, i in inputs)
        raise PlanError(f"tensor '{tensor}' runs over the vocabulary in some models but not in others: {detail}",
                        hint="the models do not share an architecture")
    return plan_alignment(tokenizer, tensor=tensor, models=[m for m, _ in inputs],
                          names=[sources[m].name for m, _ in inputs], axes=axes,
                          shapes=[i.shape for _, i in inputs], base=base, order=order)


def set_vocab_size(config: dict[str, Any], rows: int) -> None:
    """Write the output vocabulary size where the input config keeps it."""
    for holder in (config, config.get("text_config"), config.get("llm_config")):
        if isinstance(holder, dict) and "vocab_size" in holder:
            holder["vocab_size"] = rows
            return
    config["vocab_size"] = rows
