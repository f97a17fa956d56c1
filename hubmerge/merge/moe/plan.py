"""The MoE plan: every output tensor, the input tensors it is streamed from, in order, from configs and
safetensors headers alone (``hubmerge validate`` prints it before anything is read).

The output model's own tensor list comes from transformers: the output family's model is built on the
meta device from the generated config (no memory, no weights) and its state dict says which tensors it
has, with which shapes. Everything but the MLPs is the base's; each layer's MLP becomes the router, the
experts (fused or one tensor each, as the family stores them) and the shared expert.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import torch

from hubmerge.errors import PlanError
from hubmerge.merge.layout import LAYER_RE, is_output_embedding
from hubmerge.merge.modules import analyse
from hubmerge.merge.moe import families as fam
from hubmerge.merge.moe.config import base_config, moe_config
from hubmerge.merge.moe.method import bind_parts
from hubmerge.merge.plan import TORCH_DTYPES, PlannedInput, PlannedTensor, tensor_seed
from hubmerge.merge.tokenizer.planning import chat_template_for, vocab_rows
from hubmerge.sources.model import ModelSource
from hubmerge.sources.open import open_model
from hubmerge.sources.safetensors_format import DTYPE_NAMES, DTYPES, ITEM_SIZES, TensorInfo
from hubmerge.spec.model import ModelRef
from hubmerge.spec.moe import ExpertSpec, MoESpec

logger = logging.getLogger(__name__)

# Checkpoint entries transformers ignores on load (older checkpoints carry them); never copied.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class MoETensor:
    """One output tensor and the parts it is written from, in order (several for fused experts)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype code
    role: str  # "base", "zeros", "router", "shared router", "experts", "shared expert"
    parts: tuple[PlannedTensor, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_SIZES[self.dtype]


@dataclass
class MoEPlan:
    spec: MoESpec
    family: fam.Family
    models: list[ModelSource]
    tensors: list[MoETensor]
    num_layers: int
    config: Any  # the output config (transformers config, or a dict for DeepSeek-MoE)
    base: int  # model index of the base
    experts: list[int]  # model index of each routed expert, in recipe order
    shared: list[int]  # model index of each shared expert
    hidden_size: int
    layer_prefix: str  # e.g. "model.layers"
    gate_dtype: str  # dtype the router rows are computed in (safetensors code)
    tokenizer_source: int
    chat_template: str | None = None
    method: Any = None  # the executor's per-part function over the router rows (``method.bind_parts``)
    kind: str = "moe"
    tokenizer: Any = None  # the MoE keeps the base's vocabulary: no tokenizer is built
    layer_origin: list[int] = field(default_factory=list)

    @property
    def config_source(self) -> int:
        return self.base

    @property
    def items(self) -> list[PlannedTensor]:
        """What the executor streams: every part of every output tensor, in output order."""
        return [p for t in self.tensors for p in t.parts]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def input_bytes(self) -> int:
        return sum(i.info.nbytes for p in self.items for i in p.inputs)

    def router_names(self, group: str) -> list[str]:
        return [t.name for t in self.tensors if t.role == group]


def plan_moe(spec: MoESpec, *, base_dir: Path | None = None, hub: Any = None, allow_pickle: bool = False) -> MoEPlan:
    """Open every model the recipe names (headers only) and plan the MoE."""
    sources: dict[ModelRef, ModelSource] = {}
    try:
        for ref in spec.referenced_models():
            sources[ref] = open_model(ref, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
        return MoEPlanner(spec, sources).plan()
    except BaseException:
        for s in sources.values():
            s.close()
        raise


def _where(expert: ExpertSpec) -> str:
    return f"{expert.yaml_path}.source_model ({expert.source_model})"


class MoEPlanner:
    def __init__(self, spec: MoESpec, sources: dict[ModelRef, ModelSource]):
        self.spec = spec
        self.refs = list(sources)
        self.models = [sources[r] for r in self.refs]
        self.base = self.refs.index(spec.base_model)
        self.tensors: list[MoETensor] = []

    def index(self, ref: ModelRef) -> int:
        return self.refs.index(ref)

    # -- checks, from configs and headers --------------------------------------------------------------
    def _check_inputs(self) -> list[str]:
        base = self.models[self.base]
        base_type = base.config.get("model_type")
        layout = analyse(base.tensors, base.config, model=base.name)
        self.num_layers = layout.num_layers
        self.hidden = base.config.get("hidden_size")
        if not isinstance(self.hidden, int) or self.num_layers < 1:
            raise PlanError(f"base_model {base.name}: config.json has no hidden_size or no layers",
                            hint="the base must be a decoder-only text model (Llama, Mistral, Qwen2, Qwen3)")
        prefixes = {m["prefix"] for n in base.tensors if (m := LAYER_RE.match(n))}
        if len(prefixes) != 1:
            raise PlanError(f"base_model {base.name}: expected one stack of layers, found {sorted(prefixes) or 'none'}")
        self.prefix = prefixes.pop()
        self.mlp_shapes = [self._mlp(base, i, "base_model") for i in range(self.num_layers)]
        rows = vocab_rows(base)
        types = [base_type]
        for e in self.spec.all_experts:
            model = self.models[self.index(e.source_model)]
            types.append(model.config.get("model_type"))
            where = _where(e)
            if model.config.get("model_type") != base_type:
                raise PlanError(f"{where}: its architecture is {model.config.get('model_type')}, the base's is "
                                f"{base_type}", hint="every expert must be a fine-tune of the base model")
            if model.config.get("hidden_size") != self.hidden:
                raise PlanError(f"{where}: hidden size {model.config.get('hidden_size')} differs from the base's "
                                f"{self.hidden}", hint="every expert must be a fine-tune of the base model")
            layers = analyse(model.tensors, model.config, model=model.name).num_layers
            if layers != self.num_layers:
                raise PlanError(f"{where}: {layers} layers, the base has {self.num_layers}",
                                hint="every expert must be a fine-tune of the base model")
            if vocab_rows(model) != rows:
                raise PlanError(f"{where}: vocabulary of {vocab_rows(model)} tokens differs from the base's {rows}",
                                hint="the MoE keeps the base's embeddings and tokenizer; experts must share them")
            for i in range(self.num_layers):
                shapes = self._mlp(model, i, where)
                if shapes != self.mlp_shapes[i]:
                    raise PlanError(f"{where}: layer {i}'s MLP has shapes {shapes}, the base's {self.mlp_shapes[i]}",
                                    hint="every expert must be a fine-tune of the base model")
        tk = self.spec.tokenizer
        if tk is not None and isinstance(tk.source, ModelRef):
            donor = self.models[self.index(tk.source)]
            if vocab_rows(donor) != rows:
                raise PlanError(f"tokenizer_source {tk.source}: vocabulary of {vocab_rows(donor)} tokens differs "
                                f"from the base's {rows}", hint="the MoE keeps the base's embeddings")
        return types

    def _mlp(self, model: ModelSource, layer: int, where: str) -> dict[str, tuple[int, ...]]:
        out = {}
        for proj in fam.PROJECTIONS:
            name = fam.dense_mlp_name(self.prefix, layer, proj)
            info = model.tensors.get(name)
            if info is None:
                raise PlanError(f"{where}: tensor '{name}' is missing",
                                hint="experts need a dense gate_proj/up_proj/down_proj MLP in every layer")
            if not DTYPES[info.dtype].is_floating_point:
                raise PlanError(f"{where}: tensor '{name}' has non-float dtype {info.dtype}")
            out[proj] = info.shape
        bias = next((n for n in model.tensors if n.startswith(f"{self.prefix}.{layer}.mlp.") and n.endswith(".bias")),
                    None)
        if bias is not None:
            raise PlanError(f"{where}: its MLP has biases ('{bias}'), which no MoE output family holds",
                            hint="mergekit-moe builds MoEs from Llama/Mistral/Qwen MLPs without biases")
        return out

    # -- the plan -----------------------------------------------------------------------------------
    def plan(self) -> MoEPlan:
        types = self._check_inputs()
        family = fam.select_family(self.spec, types)
        base = self.models[self.base]
        self.family = family
        self.base_cfg = base_config(base.config, base.name)
        self.out_dtype = self._out_dtype()
        config = moe_config(family, self.base_cfg, experts=len(self.spec.experts), shared=len(self.spec.shared_experts),
                            per_token=self.spec.experts_per_token, dtype=self.out_dtype)
        self.gate_dtype = "BF16" if self.spec.gate_mode.startswith("hidden") else "F32"
        expected = _meta_state_shapes(config if family.native else self.base_cfg)
        self._plan_tensors(expected)
        # The routers last: their rows may still be being computed while everything else streams.
        self.tensors = [t for t in self.tensors if "router" not in t.role] + \
            [t for t in self.tensors if "router" in t.role]
        tk = self.spec.tokenizer
        donor = self.base if tk is None or not isinstance(tk.source, ModelRef) else self.index(tk.source)
        return MoEPlan(self.spec, family, self.models, self.tensors, self.num_layers, config, self.base,
                       [self.index(e.source_model) for e in self.spec.experts],
                       [self.index(e.source_model) for e in self.spec.shared_experts], self.hidden, self.prefix,
                       self.gate_dtype, donor, chat_template_for(self.spec, self.models),
                       method=bind_parts({}), layer_origin=list(range(self.num_layers)))

    def _out_dtype(self) -> torch.dtype | None:
        """The recipe's dtype, else the base config's (mergekit-moe's rule); None keeps each input's."""
        if self.spec.dtype:
            return TORCH_DTYPES[self.spec.dtype]
        dtype = getattr(self.base_cfg, "dtype", None)
        if isinstance(dtype, str):
            dtype = TORCH_DTYPES.get(dtype.removeprefix("torch."))
        return dtype if isinstance(dtype, torch.dtype) else None

    def _plan_tensors(self, expected: dict[str, tuple[int, ...]]) -> None:
        base = self.models[self.base]
        moe_done: set[int] = set()
        taken: set[str] = set()
        for name, shape in expected.items():
            match = LAYER_RE.match(name)
            if match and match["suffix"].startswith("mlp."):
                layer = int(match["index"])
                if layer not in moe_done:
                    moe_done.add(layer)
                    self._plan_layer_moe(layer)
                continue
            info = base.tensors.get(name)
            if info is None:
                self._missing(name, shape)
                continue
            if info.shape != shape:
                raise PlanError(f"base_model {base.name}: tensor '{name}' has shape {list(info.shape)}, the "
                                f"{self.family.display} model expects {list(shape)}")
            taken.add(name)
            self._add(name, shape, "base", [(self.base, info, {"op": "copy"})])
        dropped = sorted(n for n in base.tensors if n not in taken and not (LAYER_RE.match(n) and ".mlp." in n)
                         and not n.endswith(IGNORED_SUFFIXES))
        if dropped:
            logger.warning("%d tensor(s) of the base have no place in a %s model and are left out: %s",
                           len(dropped), self.family.display, ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))

    def _missing(self, name: str, shape: tuple[int, ...]) -> None:
        base = self.models[self.base]
        if is_output_embedding(name):  # tied embeddings: the output head is the input embedding (mergekit skips it)
            if not getattr(self.base_cfg, "tie_word_embeddings", False):
                logger.warning("%s has no '%s' and does not tie its embeddings; the MoE has none either",
                               base.name, name)
            return
        if self.family.id == "qwen2_moe" and name.endswith("_proj.bias"):  # Qwen2-MoE's attention has biases
            dtype = DTYPE_NAMES[self.out_dtype] if self.out_dtype is not None else "F32"
            self._add(name, shape, "zeros", [(None, None, {"op": "zeros", "shape": list(shape)})], dtype=dtype)
            return
        raise PlanError(f"base_model {base.name}: tensor '{name}' is missing; the {self.family.display} model needs it",
                        hint="the base checkpoint is incomplete or not of the architecture its config names")

    def _plan_layer_moe(self, layer: int) -> None:
        spec, family, p = self.spec, self.family, self.prefix
        experts = [(self.index(e.source_model), e) for e in spec.experts]
        n, hidden = len(experts), self.hidden
        router = {"op": "router", "group": "router", "layer": layer}
        self._add(fam.router_name(family, p, layer), (n, hidden), "router", [(None, None, router)],
                  dtype=self._gate_out())
        if family.fused:
            for name, projections in fam.fused_tensors(family, p, layer):
                parts = [self._expert_part(m, e, layer, proj) for m, e in experts for proj in projections]
                rows = sum(part[1].shape[0] for part in parts[:len(projections)])
                self._add(name, (n, rows, *parts[0][1].shape[1:]), "experts", parts)
        else:
            for k, (m, e) in enumerate(experts):
                for name, proj in fam.expert_tensors(family, p, layer, k):
                    part = self._expert_part(m, e, layer, proj)
                    self._add(name, part[1].shape, "experts", [part])
        if family.shared and spec.shared_experts:
            shared = spec.shared_experts[0]
            m = self.index(shared.source_model)
            for name, proj in fam.shared_tensors(family, p, layer):
                part = self._expert_part(m, shared, layer, proj)
                self._add(name, part[1].shape, "shared expert", [part])
            if family.shared_gated:
                rows = {"op": "router", "group": "shared router", "layer": layer}
                self._add(fam.shared_gate_name(family, p, layer), (1, hidden), "shared router", [(None, None, rows)],
                          dtype=self._gate_out())

    def _expert_part(self, model: int, expert: ExpertSpec, layer: int, proj: str):
        info = self.models[model].tensors[fam.dense_mlp_name(self.prefix, layer, proj)]
        return (model, info, {"op": "expert", "noise_scale": expert.noise_scale,
                              "residual_scale": expert.residual_scale if proj == "down_proj" else None})

    def _gate_out(self) -> str:
        return DTYPE_NAMES[self.out_dtype] if self.out_dtype is not None else self.gate_dtype

    def _add(self, name: str, shape: tuple[int, ...], role: str,
             parts: list[tuple[int | None, TensorInfo | None, dict[str, Any]]], dtype: str | None = None) -> None:
        if dtype is None:
            if self.out_dtype is not None:
                dtype = DTYPE_NAMES[self.out_dtype]
            else:  # mergekit keeps each tensor's own dtype (stacked experts: their common one)
                dtype = DTYPE_NAMES[reduce(torch.promote_types, [DTYPES[i.dtype] for _, i, _ in parts])]
        seed = self.spec.hubmerge.seed
        planned = []
        for k, (model, info, kwargs) in enumerate(parts):
            if info is None:  # made here, not read: router rows or zeros
                planned.append(PlannedTensor(name, tuple(shape), dtype, self.gate_dtype if kwargs["op"] == "router"
                                             else dtype, None, (), kwargs, tensor_seed(seed, f"{name}#{k}")))
            else:
                planned.append(PlannedTensor(name, info.shape, dtype, info.dtype, None, (PlannedInput(model, info),),
                                             kwargs, tensor_seed(seed, f"{name}#{k}")))
        self.tensors.append(MoETensor(name, tuple(shape), dtype, role, tuple(planned)))


def _meta_state_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """The tensors (and shapes) of the model transformers builds for ``config``, in its module order,
    built on the meta device: no memory, no weights, no remote code."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:  # an unknown or inconsistent config: say which
        raise PlanError(f"transformers cannot build a {getattr(config, 'model_type', '?')} model from the generated "
                        f"config: {exc}") from None
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}
