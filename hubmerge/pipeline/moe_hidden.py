"""``gate_mode: hidden``: the base model's per-layer hidden states for batches of prompts, computed one
decoder layer at a time with the layer's weights streamed from the base, so memory holds the embeddings,
one layer (plus the next one being read) and the prompts' activations, never the whole model.

Numerics are transformers' own, op for op, as mergekit-moe runs them (the whole model loaded in bfloat16,
one forward per batch): the model is built on the meta device from the base's config, and a first pass
with every decoder layer replaced by a recorder captures, per batch, the embeddings and the exact
arguments the model hands each layer (attention mask, rotary embeddings, positions), which depend on the
input shapes only. Then, layer after layer, the real layer gets its weights and runs on every batch.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm

from hubmerge.errors import MergeError, PlanError
from hubmerge.merge.layout import LAYER_RE
from hubmerge.merge.moe.config import base_config
from hubmerge.merge.moe.gates import layer_state, prompts_mean
from hubmerge.sources.model import ModelSource

logger = logging.getLogger(__name__)

DTYPE = torch.bfloat16  # mergekit-moe loads the base in bfloat16 for routing, whatever its own dtype


class _Stop(Exception):
    """Raised by the last recorder: nothing past the inputs of the last layer is needed."""


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer ``index`` during the first pass: keeps what the model passes in."""

    def __init__(self, index: int, last: int, calls: list):
        super().__init__()
        self.index, self.last, self.calls = index, last, calls

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == self.last:
            raise _Stop
        self.calls.append((hidden_states, args, kwargs))
        return hidden_states


def layer_inputs_per_batch(base: ModelSource, batches: list[dict[str, torch.Tensor]], *, prefix: str,
                           num_layers: int, device: torch.device, average: bool,
                           show_progress: bool = True, stop: threading.Event | None = None) -> list[torch.Tensor]:
    """For each batch (``input_ids`` and ``attention_mask``): [layers, hidden] in bfloat16, the input of every
    layer (layer 0's is the embeddings) reduced as ``layer_state`` does, then averaged over the prompts."""
    from transformers import AutoModelForCausalLM

    config = base_config(base.config, base.name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPE, trust_remote_code=False)
    model.eval()
    _materialise_outside_layers(model, base, device)
    _materialise_buffers(model, model, device, skip_layers=True)
    layers = model.get_submodule(prefix)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != num_layers:
        raise PlanError(f"{base.name}: the {config.model_type} model has no {num_layers}-layer stack at '{prefix}'")
    real = list(layers)
    calls: list[list] = []
    for batch in batches:  # first pass: the arguments of every layer, per batch
        recorded: list = []
        for i in range(num_layers):
            layers[i] = _Recorder(i, num_layers - 1, recorded)
        try:
            with torch.no_grad():
                model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
        except _Stop:
            pass
        finally:
            for i, layer in enumerate(real):
                layers[i] = layer
        if len(recorded) != num_layers - 1:
            raise MergeError(f"{base.name}: the model ran {len(recorded)} of its {num_layers} layers; "
                             "hubmerge cannot trace its hidden states")
        calls.append(recorded)

    states = [call[0][0] for call in calls]  # each batch's input of layer 0 (the embeddings)
    reduced = [[layer_state(h, average=average)] for h in states]
    wanted = [i for i in range(num_layers - 1)]
    with ThreadPoolExecutor(1, thread_name_prefix="hubmerge-layer-read") as pool:
        upcoming = pool.submit(_read_layer, base, prefix, 0) if wanted else None
        for i in tqdm(wanted, desc="Routing: hidden states", unit="layer", disable=not show_progress, leave=False):
            if stop is not None and stop.is_set():
                raise MergeError("computing the router rows was stopped")
            weights = upcoming.result()
            upcoming = pool.submit(_read_layer, base, prefix, i + 1) if i + 1 in wanted else None
            layer = real[i]
            _load(layer, weights, device, where=f"{base.name} layer {i}")
            _materialise_buffers(model, layer, device)
            del weights
            with torch.no_grad():
                for b, recorded in enumerate(calls):
                    _, args, kwargs = recorded[i]
                    out = layer(states[b], *args, **kwargs)
                    states[b] = out[0] if isinstance(out, tuple) else out
                    reduced[b].append(layer_state(states[b], average=average))
            layer.to("meta")  # frees the layer's weights before the next one is loaded
    return [prompts_mean([r.cpu() for r in per_layer]) for per_layer in reduced]


def _read_layer(base: ModelSource, prefix: str, index: int) -> dict[str, torch.Tensor]:
    start = f"{prefix}.{index}."
    return {name[len(start):]: base.reader.read(info) for name, info in base.tensors.items() if name.startswith(start)}


def _load(module: torch.nn.Module, weights: dict[str, torch.Tensor], device: torch.device, *, where: str) -> None:
    """Put ``weights`` into a meta-device module, each cast to the dtype the module declares (as loading a
    checkpoint does)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise PlanError(f"{where}: the checkpoint lacks {', '.join(missing[:3])}", hint="the base checkpoint is incomplete")
    state = {k: weights[k].to(device=device, dtype=expected[k].dtype) for k in expected}
    module.load_state_dict(state, assign=True, strict=True)


def _materialise_buffers(model: torch.nn.Module, root: torch.nn.Module, device: torch.device, *,
                         skip_layers: bool = False) -> None:
    """Non-persistent buffers under ``root`` (rotary frequencies, embedding scales) computed on ``device`` as
    loading a model computes them: allocated, then set by the model's own weight initialisation."""
    owners = set()
    for name, buf in list(root.named_buffers()):
        owner, _, attr = name.rpartition(".")
        module = root.get_submodule(owner)
        if attr in module._non_persistent_buffers_set and buf.is_meta and not (skip_layers and LAYER_RE.match(name)):
            module._buffers[attr] = torch.empty_like(buf, device=device)
            owners.add(owner)
    for owner in owners:
        model._init_weights(root.get_submodule(owner))


def _materialise_outside_layers(model: torch.nn.Module, base: ModelSource, device: torch.device) -> None:
    """The parameters the model uses before its first layer (embeddings) and beside its layers, from the
    base's checkpoint; the decoder layers are streamed and the output head is never reached (the last
    layer's input is the last state needed)."""
    head = model.get_output_embeddings()
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    embed_params = {id(p) for p in model.get_input_embeddings().parameters()}
    for name, param in list(model.named_parameters()):
        if LAYER_RE.match(name) or (id(param) in head_params and id(param) not in embed_params):
            continue
        info = base.tensors.get(name)
        if info is None:
            raise PlanError(f"{base.name}: tensor '{name}' is missing from the checkpoint")
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        value = base.reader.read(info).to(device=device, dtype=param.dtype)
        module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)


def tokenize_prompts(tokenizer: Any, prompts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """mergekit-moe's batch: each prompt prefixed with the BOS token text, no special tokens added, padded on
    the left with the tokenizer set up as ``routing_tokenizer`` does."""
    encoded = tokenizer([(tokenizer.bos_token or "") + p for p in prompts], return_tensors="pt", padding=True,
                        add_special_tokens=False)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def routing_tokenizer(tokenizer: Any) -> Any:
    """Left padding with the BOS token (the EOS token when there is none), as mergekit-moe sets it up (and
    saves it with the MoE)."""
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
