"""PEFT LoRA adapters as inputs: ``model+adapter`` folded into the model's tensors as they are read.

No merged copy of the model is written anywhere: the source of a ``model+adapter`` reference serves the
model's tensors, and for each tensor the adapter targets it reads the adapter's two small factors and
returns ``W + scaling * B @ A`` instead. What can go wrong (a target the model lacks, shapes that do
not fit, an adapter feature we cannot fold) is found when the source is opened, before any data is read.

The arithmetic follows PEFT's ``merge_and_unload`` (which mergekit 0.1.5 runs on a model loaded with
transformers): ``delta = transpose(B @ A) * scaling`` in float32, added to the weight in float32, the sum
cast back to the weight's dtype. ``scaling`` is ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
``use_rslora``), with per-module ``rank_pattern``/``alpha_pattern`` overrides matched as PEFT does.
Full tensors saved in the adapter (``modules_to_save``, or the embedding a resized-vocabulary adapter
saves as ``...base_layer.weight``) replace the model's tensor, as they do once PEFT has loaded them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hubmerge.errors import SourceError, SpecError
from hubmerge.sources.hub_model import hub_weights, pinned_listing
from hubmerge.sources.model import (
    ModelSource,
    find_weight_files,
    local_folder,
    local_weights,
    on_hub,
    parse_json_file,
)
from hubmerge.sources.peft_patterns import PatternError, compile_key, new_budget, pattern_key
from hubmerge.sources.readers import POOL, TensorReader
from hubmerge.sources.safetensors_format import DTYPES, TensorInfo
from hubmerge.spec.model import ModelRef

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."

# adapter_config.json switches for LoRA variants whose effect is not ``W + scaling * B @ A`` (or that
# cannot be folded into the weights at all): refused by name rather than folded wrongly.
UNSUPPORTED_SWITCHES = {
    "use_dora": "DoRA (use_dora) rescales each weight column by a learned magnitude",
    "lora_bias": "lora_bias adapters also train a bias",
    "layer_replication": "layer_replication duplicates layers of the base model",
    "trainable_token_indices": "trainable_token_indices trains single embedding rows",
    "target_parameters": "target_parameters adapts raw parameters (e.g. MoE experts) rather than modules",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) applies only after its invocation "
                               "tokens, which folding cannot express",
    "use_qalora": "QA-LoRA (use_qalora) pools its inputs",
}

MAX_PATTERN_KEYS = 100_000  # rank_pattern / alpha_pattern entries (extract_lora writes one per module)

_LINEAR_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
_EMBEDDING_KEY = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<which>[AB])(?:\.[^.]+)?$")


@dataclass(frozen=True)
class AdapterConfig:
    """The parts of a PEFT ``adapter_config.json`` that decide the fold."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    base_model: str | None = None  # base_model_name_or_path: the model it was trained on (for hints)
    where: str = ADAPTER_CONFIG  # the file, for errors
    _budget: list[int] = field(default_factory=new_budget, compare=False, repr=False)

    def rank_and_scaling(self, module: str) -> tuple[int, float]:
        """(r, scaling) of one module (its name inside the model, e.g. ``model.layers.0.self_attn.q_proj``).
        The pattern keys are matched as PEFT matches them (peft_patterns), in bounded time."""
        try:
            r = self.rank_pattern.get(pattern_key(self.rank_pattern, module, self._budget), self.r)
            alpha = self.alpha_pattern.get(pattern_key(self.alpha_pattern, module, self._budget), self.lora_alpha)
        except PatternError as exc:
            raise SourceError(f"{self.where}: rank_pattern/alpha_pattern: {exc}",
                              hint="use plain module names or simple patterns as keys") from None
        return r, (alpha / math.sqrt(r) if self.use_rslora else alpha / r)


def parse_adapter_config(doc: Any, display: str) -> AdapterConfig:
    where = f"{display}/{ADAPTER_CONFIG}"
    if not isinstance(doc, dict):
        raise SourceError(f"{where} must be a JSON object")
    peft_type = str(doc.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise SourceError(f"{where}: peft_type {doc.get('peft_type')!r} is not supported; only LoRA adapters "
                          "can be folded into a model", hint="merge the adapter with PEFT's merge_and_unload first")
    for switch, why in UNSUPPORTED_SWITCHES.items():
        if doc.get(switch):
            raise SourceError(f"{where}: {switch} is set; {why}, so hubmerge cannot fold this adapter",
                              hint="merge it with PEFT (model.merge_and_unload()) and use the merged model")
    r, alpha = doc.get("r"), doc.get("lora_alpha")
    if not _is_number(r) or int(r) != r or r <= 0:
        raise SourceError(f"{where}: 'r' must be a positive integer, found {r!r}")
    if not _is_number(alpha):
        raise SourceError(f"{where}: 'lora_alpha' must be a number, found {alpha!r}")
    patterns = {}
    for key, check in (("rank_pattern", lambda v: _is_number(v) and int(v) == v and v > 0),
                       ("alpha_pattern", _is_number)):
        value = doc.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and check(v) for k, v in value.items()):
            raise SourceError(f"{where}: '{key}' must map module patterns to numbers, found {_short(value)}")
        if len(value) > MAX_PATTERN_KEYS:
            raise SourceError(f"{where}: {key} has more than {MAX_PATTERN_KEYS} entries")
        for pattern in value:
            try:
                compile_key(pattern)
            except PatternError as exc:
                raise SourceError(f"{where}: {key} key {_short(pattern)}: {exc}",
                                  hint="PEFT matches these keys as regular expressions against module names") from None
        patterns[key] = value
    base = doc.get("base_model_name_or_path")
    return AdapterConfig(int(r), float(alpha), bool(doc.get("use_rslora")), bool(doc.get("fan_in_fan_out")),
                         {k: int(v) for k, v in patterns["rank_pattern"].items()},
                         {k: float(v) for k, v in patterns["alpha_pattern"].items()},
                         base if isinstance(base, str) else None, where)


def _short(value: Any, limit: int = 120) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fold_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, *,
              transpose: bool = False) -> torch.Tensor:
    """LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) folded into a weight:

        W' = W + scaling * (B @ A)        (B @ A)^T for fan_in_fan_out layers and embeddings

    computed in float32 (as PEFT's merge does) and cast back to ``weight``'s dtype. ``lora_a`` is
    ``(r, in)``, ``lora_b`` is ``(out, r)``."""
    delta = lora_b.float() @ lora_a.float()
    if transpose:
        delta = delta.T
    return (weight.float() + delta * scaling).to(weight.dtype)


@dataclass(frozen=True)
class Fold:
    """What happens to one tensor of the model: an optional replacement, then an optional LoRA delta."""

    target: str
    replacement: TensorInfo | None = None  # a full tensor the adapter saved (modules_to_save, base_layer)
    lora_a: TensorInfo | None = None
    lora_b: TensorInfo | None = None
    scaling: float = 0.0
    transpose: bool = False

    @property
    def adapter_inputs(self) -> list[TensorInfo]:
        return [i for i in (self.replacement, self.lora_a, self.lora_b) if i is not None]


def plan_folds(adapter_tensors: dict[str, TensorInfo], config: AdapterConfig, model: dict[str, TensorInfo], *,
               adapter: str, model_name: str) -> dict[str, Fold]:
    """Map every adapter tensor onto the model tensor it changes, checking names, ranks and shapes.

    ``adapter`` and ``model_name`` name the two in errors."""
    pairs: dict[str, dict[str, Any]] = {}  # model tensor -> {"a", "b", "embedding", "module", "replacement"}
    hint = (f"the adapter was trained for {config.base_model}" if config.base_model
            else "the adapter was trained for a different model")
    for key, info in adapter_tensors.items():
        where = f"{adapter}/{info.file}: tensor '{key}'"
        if not DTYPES[info.dtype].is_floating_point:
            raise SourceError(f"{where} has non-float dtype {info.dtype}")
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if ".lora_magnitude_vector" in name:
            raise SourceError(f"{where} is a DoRA magnitude; DoRA adapters cannot be folded by hubmerge",
                              hint="merge it with PEFT (model.merge_and_unload()) and use the merged model")
        if re.search(r"\.lora_B(\.[^.]+)?\.bias$", name):
            raise SourceError(f"{where} is a LoRA bias (lora_bias), which hubmerge does not fold",
                              hint="merge it with PEFT (model.merge_and_unload()) and use the merged model")
        match = _LINEAR_KEY.match(name) or _EMBEDDING_KEY.match(name)
        if match is not None:
            module = match.group("module")
            entry = pairs.setdefault(f"{module}.weight", {"module": module})
            entry["embedding"] = match.re is _EMBEDDING_KEY
            entry[match.group("which").lower()] = info
            entry.setdefault("keys", []).append(key)
            continue
        if ".lora_" in name:
            raise SourceError(f"{where}: unknown kind of LoRA tensor",
                              hint="only lora_A/lora_B and lora_embedding_A/B tensors can be folded")
        target = name.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
        if target not in model and _tied_head(target, adapter_tensors, model):
            continue  # a tied-embedding model's head, saved beside its embedding (PEFT ensure_weight_tying)
        if target not in model:
            raise SourceError(f"{where} replaces '{target}', which is not a tensor of {model_name}", hint=hint)
        if model[target].shape != info.shape:
            raise SourceError(f"{where} has shape {list(info.shape)}, but '{target}' of {model_name} has "
                              f"{list(model[target].shape)}",
                              hint="adapters that resize the vocabulary cannot be folded; " + hint)
        pairs.setdefault(target, {"module": target.rsplit(".", 1)[0]})["replacement"] = info

    folds: dict[str, Fold] = {}
    for target, entry in pairs.items():
        file = next(i.file for i in (entry.get("a"), entry.get("b"), entry.get("replacement")) if i is not None)
        where = f"{adapter}/{file}: tensors {', '.join(repr(k) for k in entry.get('keys', [])) or repr(target)}"
        if "a" not in entry and "b" not in entry:
            folds[target] = Fold(target, replacement=entry["replacement"])
            continue
        if "a" not in entry or "b" not in entry:
            missing = "A" if "a" not in entry else "B"
            raise SourceError(f"{where}: the matching lora_{missing} tensor is missing from the adapter",
                              hint="the adapter file is incomplete")
        base = model.get(target)
        if base is None:
            raise SourceError(f"{where} adapt '{target}', which is not a tensor of {model_name}", hint=hint)
        if not DTYPES[base.dtype].is_floating_point or len(base.shape) != 2:
            raise SourceError(f"{where} adapt '{target}' of {model_name}, a {len(base.shape)}-D {base.dtype} "
                              "tensor; only 2-D float weights (linear layers, embeddings) can take a LoRA")
        a, b = entry["a"], entry["b"]
        r, scaling = config.rank_and_scaling(entry["module"])
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise SourceError(f"{where}: shapes {list(a.shape)} (A) and {list(b.shape)} (B) do not form a "
                              "rank-r product B @ A", hint="the adapter file is corrupt")
        if a.shape[0] != r:
            raise SourceError(f"{where}: rank {a.shape[0]}, but {adapter}/{ADAPTER_CONFIG} gives r={r} for "
                              f"module '{entry['module']}'", hint="check r and rank_pattern in the adapter config")
        product = (b.shape[0], a.shape[1])  # B @ A
        if entry["embedding"]:
            transpose = True  # PEFT stores embedding factors as A (r, vocab), B (dim, r)
        elif product[::-1] == base.shape and product != base.shape:
            transpose = True  # a Conv1D layer (GPT-2 style): weight is (in, out)
        elif product == base.shape and product[::-1] != base.shape:
            transpose = False
        else:
            transpose = config.fan_in_fan_out  # square: only the config can tell
        if (product[::-1] if transpose else product) != base.shape:
            raise SourceError(f"{where}: B @ A has shape {list(product)}, which does not fit '{target}' "
                              f"{list(base.shape)} of {model_name}", hint=hint)
        folds[target] = Fold(target, entry.get("replacement"), a, b, scaling, transpose)
    return folds


_HEADS = ("lm_head.weight", "embed_out.weight")
_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")


def _tied_head(target: str, adapter_tensors: dict[str, TensorInfo], model: dict[str, TensorInfo]) -> bool:
    """An output head the model does not store (it is tied to the input embedding), saved by the adapter
    together with a replacement of that embedding: folding the embedding covers it."""
    if not target.endswith(_HEADS):
        return False
    embeds = [n for n in model if n.endswith(_EMBEDDINGS) and ".layers." not in n]
    return bool(embeds) and any(f"{PEFT_PREFIX}{e}" in adapter_tensors or e in adapter_tensors for e in embeds)


class LoraFoldingReader:
    """A TensorReader serving a model's tensors with an adapter folded in (tensor by tensor)."""

    def __init__(self, model_reader: TensorReader, adapter_reader: TensorReader, folds: dict[str, Fold]):
        self.model_reader = model_reader
        self.adapter_reader = adapter_reader
        self.folds = folds

    @property
    def root(self) -> Path | None:  # the model's folder, where the card looks for its README
        return getattr(self.model_reader, "root", None)

    def expect(self, infos: list[TensorInfo]) -> None:
        expect = getattr(self.model_reader, "expect", None)
        if expect is not None:
            expect([i for i in infos if i.name not in self.folds or self.folds[i.name].replacement is None])
        expect = getattr(self.adapter_reader, "expect", None)
        if expect is not None:
            expect([a for i in infos if i.name in self.folds for a in self.folds[i.name].adapter_inputs])

    def read(self, info: TensorInfo) -> torch.Tensor:
        fold = self.folds.get(info.name)
        if fold is None:
            return self.model_reader.read(info)
        if fold.replacement is not None:
            weight = self.adapter_reader.read(fold.replacement).to(info.torch_dtype)
        else:
            weight = self.model_reader.read(info)
        if fold.lora_a is None:
            return weight
        folded = fold_lora(weight, self.adapter_reader.read(fold.lora_a), self.adapter_reader.read(fold.lora_b),
                           fold.scaling, transpose=fold.transpose)
        POOL.give(weight)  # the unfolded weight's read buffer is free again
        return folded

    def close(self) -> None:
        self.model_reader.close()
        self.adapter_reader.close()


@dataclass
class Adapter:
    """An opened PEFT adapter: where it is (Hub SHA or local path), its config and its tensors."""

    ref: ModelRef
    name: str  # Hub repo id or local path, as the recipe names it
    revision: str | None  # pinned commit SHA (Hub) or None (local)
    is_hub: bool
    config: AdapterConfig
    tensors: dict[str, TensorInfo]
    reader: TensorReader
    display: str

    @property
    def identity(self) -> str:
        """What a merge's output depends on: where the adapter came from, its config, its tensors."""
        h = hashlib.sha256(repr(self.config).encode())
        for name in sorted(self.tensors):
            i = self.tensors[name]
            h.update(f"{name}:{i.file}:{i.dtype}:{i.shape}:{i.start}:{i.end}\n".encode())
        return f"+{self.name}@{self.revision}:{h.hexdigest()}"


def open_adapter(ref: ModelRef, *, base_dir: Path | None = None, hub: Any = None,
                 allow_pickle: bool = False) -> Adapter:
    if ref.lora is not None:
        raise SpecError(f"{ref}: an adapter cannot itself carry an adapter", path="lora")
    local = local_folder(ref, base_dir)
    if local is not None:
        return _open_local_adapter(ref, local, allow_pickle)
    return on_hub(ref, hub, lambda: _open_hub_adapter(hub, ref, allow_pickle))


def _open_local_adapter(ref: ModelRef, root: Path, allow_pickle: bool) -> Adapter:
    name = ref.path
    if not root.is_dir():
        raise SourceError(f"adapter folder not found: {root}")
    files = sorted(str(p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file())
    config = _adapter_config((root / ADAPTER_CONFIG).read_bytes() if (root / ADAPTER_CONFIG).is_file() else None,
                             name)
    weights = find_weight_files(files, lambda f: parse_json_file((root / f).read_bytes(), context=f"{name}/{f}"),
                                name, allow_pickle=allow_pickle, prefix="adapter_model")
    tensors, reader = local_weights(root, weights, name)
    return Adapter(ref, name, None, False, config, tensors, reader, name)


def _open_hub_adapter(hub: Any, ref: ModelRef, allow_pickle: bool) -> Adapter:
    sha, display, listing = pinned_listing(hub, ref)

    def read_json(file: str) -> Any:
        return parse_json_file(hub.read_small_file(ref.path, sha, file), context=f"{display}/{file}")

    raw = hub.read_small_file(ref.path, sha, ADAPTER_CONFIG) if ADAPTER_CONFIG in listing else None
    config = _adapter_config(raw, display)
    weights = find_weight_files(list(listing), read_json, display, allow_pickle=allow_pickle, prefix="adapter_model")
    tensors, reader = hub_weights(hub, ref.path, sha, display, listing, weights)
    return Adapter(ref, ref.path, sha, True, config, tensors, reader, display)


def _adapter_config(raw: bytes | None, display: str) -> AdapterConfig:
    if raw is None:
        raise SourceError(f"{display}: no {ADAPTER_CONFIG}, so it is not a PEFT adapter",
                          hint="the part after '+' in 'model+adapter' must name a PEFT LoRA adapter "
                               "(adapter_config.json + adapter_model.safetensors)")
    return parse_adapter_config(parse_json_file(raw, context=f"{display}/{ADAPTER_CONFIG}"), display)


def with_adapter(model: ModelSource, ref: ModelRef, *, base_dir: Path | None = None, hub: Any = None,
                 allow_pickle: bool = False) -> ModelSource:
    """The source of ``model+adapter``: the (opened) model's tensors, the adapter folded in as they are read.
    ``model`` is closed when the adapter cannot be opened or does not fit it."""
    assert ref.lora is not None
    try:
        adapter = open_adapter(ref.lora, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
        try:
            display = model.name if model.revision is None else f"{model.name}@{model.revision[:12]}"
            folds = plan_folds(adapter.tensors, adapter.config, model.tensors, adapter=adapter.display,
                               model_name=display)
        except BaseException:
            adapter.reader.close()
            raise
    except BaseException:
        model.close()
        raise
    logger.info("%s: folding %d tensors of adapter %s", model.name, len(folds), adapter.display)
    return ModelSource(
        ref=ref,
        name=model.name,
        config=model.config,
        tensors=model.tensors,
        reader=LoraFoldingReader(model.reader, adapter.reader, folds),
        read_file=model.read_file,
        list_files=model.list_files,
        revision=model.revision,
        is_hub=model.is_hub,
        extra={**model.extra, "adapter": adapter},
    )
