"""Planning a LoRA extraction from headers alone: which tensor of the fine-tune becomes what in the adapter.

Every tensor of the fine-tune is, in the adapter:

* a **LoRA** pair (``lora_A``/``lora_B``): the weight of a linear layer (``nn.Linear``, GPT-2's ``Conv1D``),
  and of embeddings and output heads with ``embed_lora`` (``lora_embedding_A``/``_B`` for embeddings);
  left out when the fine-tune did not change it;
* saved in **full** (``modules_to_save``): modules named by ``save_modules`` (always), embeddings and
  output heads without ``embed_lora`` and every other changed tensor (norms, biases of modules that are
  not LoRA targets...), each only when it differs from the base;
* **left out**: what the include/exclude regexes (matched against module names) filter away.

Module types come from the architecture instantiated by transformers on the meta device (no weights, never
remote code), as PEFT will see it; for an architecture transformers does not know, from the tensors
(2-D ``.weight`` = linear, the input embedding by name). Differences in architecture, shapes or
vocabulary are found here, before any tensor data is read.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubmerge.errors import PlanError
from hubmerge.merge.layout import LAYER_RE, input_embedding_name, is_output_embedding
from hubmerge.sources.model import ModelSource
from hubmerge.sources.safetensors_format import DTYPES, TensorInfo
from hubmerge.spec.tools import ExtractLoraSpec

logger = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."
HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


@dataclass(frozen=True)
class Target:
    """One tensor of the fine-tune and what the adapter keeps of it."""

    tensor: str  # e.g. model.layers.0.self_attn.q_proj.weight
    module: str  # e.g. model.layers.0.self_attn.q_proj
    kind: str  # "lora" | "full" | "bias" (a LoRA module's bias: checked, not representable by default)
    ft: TensorInfo
    base: TensorInfo | None
    max_rank: int = 0  # lora: min(rank, rows, cols)
    transpose: bool = False  # lora: embeddings and Conv1D store their factors transposed
    embedding: bool = False  # lora: lora_embedding_A/B names
    always: bool = False  # full: save even when unchanged (save_modules)

    @property
    def nbytes(self) -> int:
        return self.ft.nbytes + (self.base.nbytes if self.base is not None else 0)


@dataclass
class ExtractionPlan:
    spec: ExtractLoraSpec
    model: ModelSource  # the fine-tune
    base: ModelSource
    targets: list[Target]
    task_type: str = "CAUSAL_LM"
    fan_in_fan_out: bool = False
    base_vocab: int | None = None
    model_vocab: int | None = None
    tied_embeddings: bool = False
    head_module: str | None = None  # the output head (transformers' get_output_embeddings), e.g. lm_head
    embed_tensor: str | None = None  # the input embedding's weight
    notes: list[str] = field(default_factory=list)  # warnings shown and recorded in the card

    @property
    def sources(self) -> list[ModelSource]:
        return [self.base, self.model]

    def close(self) -> None:
        for s in self.sources:
            s.close()


def _config_value(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for holder in (config, config.get("text_config") or {}):
        for key in keys:
            if isinstance(holder, dict) and key in holder:
                return holder[key]
    return None


def check_same_architecture(model: ModelSource, base: ModelSource) -> None:
    """Architecture, hidden size and layer count must agree: one line naming both when they do not."""
    for what, get in (("architecture", lambda c: (c.get("architectures") or [c.get("model_type")])[0]),
                      ("model_type", lambda c: c.get("model_type")),
                      ("hidden size", lambda c: _config_value(c, HIDDEN_KEYS)),
                      ("layer count", lambda c: _config_value(c, LAYER_KEYS))):
        a, b = get(model.config), get(base.config)
        if a is not None and b is not None and a != b:
            raise PlanError(f"{model.name} and {base.name} differ in {what}: {a} vs {b}",
                            hint="a LoRA can only be extracted between a fine-tune and the base it was trained "
                                 "from (same architecture and shapes)")


def module_types(config: dict[str, Any]) -> tuple[dict[str, str], str | None, str | None, str | None]:
    """(module name -> "linear" | "conv1d" | "embedding" | class name, input embedding module, output
    embedding module, task type) of the architecture, instantiated by transformers on the meta device.
    Empty when transformers does not know the architecture."""
    try:
        import torch
        import transformers
        from torch import nn
        from transformers.pytorch_utils import Conv1D

        with tempfile.TemporaryDirectory(prefix="hubmerge-arch-") as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(config))
            cfg = transformers.AutoConfig.from_pretrained(tmp, trust_remote_code=False)
        arch = (config.get("architectures") or [None])[0]
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        with torch.device("meta"):
            if cls is not None and hasattr(cls, "_from_config"):
                model = cls._from_config(cfg)
            else:
                model = transformers.AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    except Exception as exc:  # an architecture transformers cannot build: fall back to the tensors
        logger.info("transformers cannot build %s (%s); module types taken from the tensors",
                    config.get("architectures"), exc)
        return {}, None, None, None
    kinds: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            kinds[name] = "linear"
        elif isinstance(module, Conv1D):
            kinds[name] = "conv1d"
        elif isinstance(module, nn.Embedding):
            kinds[name] = "embedding"
        else:
            kinds[name] = type(module).__name__
    by_id = {id(m): n for n, m in model.named_modules()}
    embed_in = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embed_out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    task = "SEQ_2_SEQ_LM" if getattr(cfg, "is_encoder_decoder", False) else "CAUSAL_LM"
    return kinds, by_id.get(id(embed_in)), by_id.get(id(embed_out)), task


def _matches_module(module: str, names: tuple[str, ...]) -> bool:
    """PEFT's rule for module names in target_modules / modules_to_save: the whole name or a dotted suffix."""
    return any(module == n or module.endswith("." + n) for n in names)


def _vocab_rows(source: ModelSource, embed: str | None) -> int | None:
    info = source.tensors.get(embed) if embed else None
    return info.shape[0] if info is not None and info.shape else None


def plan_extraction(spec: ExtractLoraSpec, model: ModelSource, base: ModelSource) -> ExtractionPlan:
    check_same_architecture(model, base)
    kinds, embed_in, embed_out, task = module_types(model.config)
    embed_name = f"{embed_in}.weight" if embed_in else input_embedding_name(model.tensors)
    model_vocab, base_vocab = _vocab_rows(model, embed_name), _vocab_rows(base, embed_name)
    vocab_differs = model_vocab is not None and base_vocab is not None and model_vocab != base_vocab
    plan = ExtractionPlan(spec, model, base, [], task or "CAUSAL_LM", base_vocab=base_vocab, model_vocab=model_vocab)
    embed_lora = spec.embed_lora
    if vocab_differs and embed_lora:
        plan.notes.append(f"the vocabularies differ ({model.name} has {model_vocab} tokens, {base.name} "
                          f"{base_vocab}): embeddings are saved in full instead of as LoRA (embed_lora off)")
        embed_lora = False
    unknown = 0
    clipped: list[tuple[str, int]] = []
    for name in _ordered(model.tensors):
        ft = model.tensors[name]
        module, _, leaf = name.rpartition(".")
        kind = kinds.get(module)
        if kind is None:
            unknown += bool(kinds)
            kind = _guess_kind(name, ft, embed_name)
        is_embedding = kind == "embedding" or name == embed_name
        is_head = (module == embed_out) if embed_out else (not LAYER_RE.match(name) and is_output_embedding(name))
        if _matches_module(module, spec.save_modules):
            plan.targets.append(Target(name, module, "full", ft, base.tensors.get(name), always=True))
            continue
        if not _selected(module, spec.include, spec.exclude):
            continue
        info = base.tensors.get(name)
        if info is None:
            raise PlanError(f"{model.name} has tensor '{name}', which {base.name} lacks",
                            hint="a LoRA can only be extracted from a fine-tune of this base; check --base")
        if not DTYPES[ft.dtype].is_floating_point:
            continue  # integer buffers (position ids...) are not weights
        vocab_tensor = is_embedding or is_head
        if info.shape != ft.shape and not (vocab_tensor and vocab_differs):
            raise PlanError(f"tensor '{name}' has shape {list(ft.shape)} in {model.name} but {list(info.shape)} "
                            f"in {base.name}", hint="the two models differ in architecture; check --base")
        lora_kind = kind in ("linear", "conv1d") or (is_embedding and kind == "embedding")
        if leaf == "weight" and len(ft.shape) == 2 and lora_kind and (embed_lora or not vocab_tensor):
            transpose = kind in ("embedding", "conv1d") or (is_embedding and kind != "linear")
            max_rank = min(spec.rank, *ft.shape)
            if max_rank < spec.rank:
                clipped.append((name, max_rank))
            plan.targets.append(Target(name, module, "lora", ft, info, max_rank, transpose, is_embedding))
            plan.fan_in_fan_out |= kind == "conv1d"
        elif leaf == "bias" and lora_kind and not vocab_tensor:
            plan.targets.append(Target(name, module, "bias", ft, info))
        else:
            plan.targets.append(Target(name, module, "full", ft, info))
    _check_orientation(plan)
    plan.head_module, plan.embed_tensor = embed_out, embed_name
    # Tied: the checkpoint has no head and the config does not untie it (transformers would initialise one).
    tied_config = _config_value(model.config, ("tie_word_embeddings",))
    plan.tied_embeddings = bool(embed_out) and f"{embed_out}.weight" not in model.tensors and tied_config is not False
    if unknown:
        logger.info("%d tensors of %s are not parameters of its transformers class; typed by shape",
                    unknown, model.name)
    if clipped:
        name, r = clipped[0]
        plan.notes.append(f"rank {spec.rank} is more than {len(clipped)} module(s) allow (e.g. '{name}' "
                          f"{list(model.tensors[name].shape)}): they keep their full rank (at most {r}), "
                          "recorded in rank_pattern")
    if not any(t.kind in ("lora", "full") for t in plan.targets):
        raise PlanError(f"nothing to extract from {model.name}: the include/exclude filters leave no tensor",
                        hint="check extract_lora.include / exclude (regexes matched against module names)")
    return plan


def _check_orientation(plan: ExtractionPlan) -> None:
    """PEFT's fan_in_fan_out is one switch for the whole adapter: Conv1D (GPT-2) and nn.Linear targets
    cannot be mixed in one adapter."""
    conv = [t for t in plan.targets if t.kind == "lora" and t.transpose and not t.embedding]
    linear = [t for t in plan.targets if t.kind == "lora" and not t.transpose]
    if conv and linear:
        raise PlanError(f"{plan.model.name} mixes Conv1D layers ('{conv[0].module}') and linear layers "
                        f"('{linear[0].module}'); a PEFT adapter has one fan_in_fan_out setting for all",
                        hint="extract them separately with extract_lora.include / exclude")


def _guess_kind(name: str, info: TensorInfo, embed_name: str | None) -> str:
    if name == embed_name:
        return "embedding"
    if name.endswith(".weight") and len(info.shape) == 2:
        return "linear"
    return "other"


def _selected(module: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if include and not any(re.search(p, module) for p in include):
        return False
    return not any(re.search(p, module) for p in exclude)


def _ordered(tensors: dict[str, TensorInfo]) -> list[str]:
    """Tensors in file order (reads then go forward through each file)."""
    return sorted(tensors, key=lambda n: (tensors[n].file, tensors[n].start))
