"""The merge plan: every output tensor, from which input tensors, with which method and parameters.

Built from configs and safetensors headers alone, so shape, dtype and parameter problems surface
before any tensor data is read. ``hubmerge validate`` prints it; tests assert on it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from hubmerge.errors import PlanError, SpecError
from hubmerge.merge.layout import ModelLayout, analyse, input_embedding_name, is_output_embedding
from hubmerge.merge.methods import MergeMethod
from hubmerge.merge.tokenizer import planning as tokenization
from hubmerge.sources.model import ModelSource
from hubmerge.sources.safetensors_format import DTYPE_NAMES, DTYPES, ITEM_SIZES, TensorInfo
from hubmerge.spec.model import MergeSpec, ModelRef, Parameters, SliceSource
from hubmerge.spec.params import ParameterValueError, resolve
from hubmerge.spec.search import require_concrete
from hubmerge.spec.validate import method_for

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64}


@dataclass(frozen=True)
class PlannedInput:
    model: int  # index into MergePlan.models
    info: TensorInfo


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype code of the output
    compute_dtype: str  # inputs are cast to this before the method runs
    base: PlannedInput | None
    others: tuple[PlannedInput, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None  # for random methods: derived from (spec seed, tensor name)
    # Vocabulary-axis tensors: how the executor re-indexes the inputs onto the output tokenizer on read.
    vocab: tokenization.VocabAlignment | None = field(default=None, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_SIZES[self.dtype]

    @property
    def inputs(self) -> tuple[PlannedInput, ...]:
        return ((self.base,) if self.base is not None else ()) + self.others


@dataclass
class MergePlan:
    spec: MergeSpec
    method: MergeMethod
    models: list[ModelSource]
    tensors: list[PlannedTensor]
    num_layers: int
    config_source: int  # index of the model whose config.json the output starts from
    tokenizer_source: int
    layer_origin: list[int] = field(default_factory=list)  # per output layer: the source layer it came from
    tokenizer: tokenization.OutputTokenizer | None = None  # built when the spec has tokenizer_source / tokenizer
    chat_template: str | None = None  # resolved text to write into the output tokenizer config

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def input_bytes(self) -> int:
        return sum(i.info.nbytes for t in self.tensors for i in t.inputs)


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed per (spec seed, output tensor name): results independent of order and splitting."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class _Group:
    """One output slice, normalised: sources (+ implicit base), base, precedence levels."""

    sources: list[SliceSource]
    base: ModelRef | None
    slice_params: Parameters
    yaml_path: str


def _groups(spec: MergeSpec) -> list[_Group]:
    if spec.models:
        sources = [SliceSource(m.model, (0, -1), m.parameters, m.yaml_path) for m in spec.models]
        if spec.base_model is not None and spec.base_model not in [s.model for s in sources]:
            sources.append(SliceSource(spec.base_model, (0, -1), {}, "base_model"))
        return [_Group(sources, spec.base_model, {}, "models")]
    return [_Group(list(s.sources), s.base_model or spec.base_model, s.parameters, s.yaml_path)
            for s in spec.slices]


class Planner:
    def __init__(self, spec: MergeSpec, models: dict[ModelRef, ModelSource]):
        self.spec = spec
        self.method = method_for(spec)
        self.refs = list(models)
        self.sources = [models[r] for r in self.refs]
        self.layouts = {r: analyse(models[r].tensors, models[r].config, model=models[r].name) for r in self.refs}
        self.tensors: list[PlannedTensor] = []
        self.seen: set[str] = set()
        self.layer_origin: list[int] = []
        self.tokenizer: tokenization.OutputTokenizer | None = None

    def model_index(self, ref: ModelRef) -> int:
        return self.refs.index(ref)

    # -- entry point -------------------------------------------------------------------------
    def plan(self) -> MergePlan:
        groups = _groups(self.spec)
        for g in groups:
            for src in g.sources:
                if src.layer_range[1] == -1:  # whole model
                    src_layers = self.layouts[src.model].num_layers
                    g.sources[g.sources.index(src)] = SliceSource(src.model, (0, src_layers), src.parameters,
                                                                  src.yaml_path)
            counts = {s.model: s.layer_range[1] - s.layer_range[0] for s in g.sources}
            if len(set(counts.values())) > 1:
                raise PlanError("models to merge have different layer counts: "
                                + ", ".join(f"{m} has {n}" for m, n in counts.items()),
                                hint="use 'slices' with matching layer_range to merge models of different depth")
            for src in g.sources:
                available = self.layouts[src.model].num_layers
                if src.layer_range[1] > available:
                    raise PlanError(f"{src.yaml_path}.layer_range {list(src.layer_range)} goes past "
                                    f"{src.model}'s {available} layers")

        first, last = groups[0], groups[-1]
        ref_first = self._reference(first)
        tokenization.check_vocab_sizes(self.spec, self.sources)
        tokenizer_ref = self._tokenizer_ref(ref_first)
        chat_template = tokenization.chat_template_for(self.spec, self.sources)
        self.tokenizer = tokenization.prepare_tokenizer(self.spec, self.refs, self.sources, tokenizer_ref)
        self._plan_flat(first, self.layouts[ref_first].pre, ref_first)
        out_layer = 0
        for g in groups:
            n = g.sources[0].layer_range[1] - g.sources[0].layer_range[0]
            for i in range(n):
                t = i / (n - 1) if n > 1 else 1.0  # mergekit: a one-layer slice sits at t=1
                self._plan_layer(g, i, out_layer, t)
                out_layer += 1
        ref_last = self._reference(last)
        self._plan_flat(last, self.layouts[ref_last].post, ref_last)

        return MergePlan(self.spec, self.method, self.sources, self.tensors, out_layer,
                         self.model_index(ref_first), self.model_index(tokenizer_ref), self.layer_origin,
                         self.tokenizer, chat_template)

    def _reference(self, g: _Group) -> ModelRef:
        """The model whose tensor names and config shape the output: the base if it is an input."""
        models = [s.model for s in g.sources]
        return g.base if g.base in models else models[0]

    def _tokenizer_ref(self, default: ModelRef) -> ModelRef:
        tk = self.spec.tokenizer
        if tk is None or tk.source in ("base", "union"):  # union starts from the base's tokenizer
            return self.spec.base_model if self.spec.base_model in self.refs else default
        if tk.source not in self.refs:
            raise SpecError(f"tokenizer source {tk.source} is not one of the input models", path="tokenizer_source")
        return tk.source

    # -- tensors ------------------------------------------------------------------------------
    def _plan_flat(self, g: _Group, names: tuple[str, ...], reference: ModelRef) -> None:
        """Pre- or post-layer tensors: same name in every input, parameters at t=0."""
        for name in names:
            inputs = [(s, self._find(s.model, name)) for s in g.sources]
            self._add(g, name, inputs, t=0.0, flat=True)

    def _plan_layer(self, g: _Group, offset: int, out_index: int, t: float) -> None:
        ref_src = next(s for s in g.sources if s.model == self._reference(g))
        ref_layer = self.layouts[ref_src.model].layer_tensors(ref_src.layer_range[0] + offset)
        self.layer_origin.append(ref_src.layer_range[0] + offset)
        for template in ref_layer:
            inputs = []
            for s in g.sources:
                layer = self.layouts[s.model].layer_tensors(s.layer_range[0] + offset)
                if template not in layer:
                    raise PlanError(f"tensor '{template.format(s.layer_range[0] + offset)}' is missing from {s.model}",
                                    hint="the models do not share an architecture")
                inputs.append((s, self.sources[self.model_index(s.model)].tensors[layer[template]]))
            self._add(g, template.format(out_index), inputs, t=t)

    def _find(self, ref: ModelRef, name: str) -> TensorInfo:
        source = self.sources[self.model_index(ref)]
        info = source.tensors.get(name)
        if info is None and is_output_embedding(name):
            # Tied embeddings: a model without an output head uses its input embedding (as mergekit does).
            alias = input_embedding_name(source.tensors)
            if alias is not None:
                info = source.tensors[alias]
        if info is None:
            raise PlanError(f"tensor '{name}' is missing from {source.name}",
                            hint="the models do not share an architecture")
        return info

    def _add(self, g: _Group, out_name: str, inputs: list[tuple[SliceSource, TensorInfo]], t: float,
             flat: bool = False) -> None:
        if out_name in self.seen:
            raise PlanError(f"output tensor '{out_name}' would be written twice")
        self.seen.add(out_name)
        method = self.method
        uses_base = method.base != "ignored" and g.base is not None and any(s.model == g.base for s, _ in inputs)
        base_pair = next(((s, i) for s, i in inputs if s.model == g.base), None) if uses_base else None
        other_pairs = [(s, i) for s, i in inputs if not (uses_base and s.model == g.base)]
        if uses_base and len(other_pairs) == len(inputs):
            other_pairs = other_pairs[1:]
        alignment = None
        if flat and self.tokenizer is not None:  # only non-layer tensors run over the vocabulary
            planned = ([base_pair] if base_pair else []) + other_pairs
            alignment = tokenization.align_tensor(
                self.tokenizer, tensor=out_name, inputs=[(self.model_index(s.model), i) for s, i in inputs],
                sources=self.sources, base=self.model_index(g.base) if g.base in self.refs else None,
                order=[next(k for k, q in enumerate(inputs) if q[0] is p[0] and q[1] is p[1]) for p in planned])
        self._check_shapes(out_name, inputs, alignment)

        shared_levels = [g.slice_params, self.spec.module_parameters, self.spec.parameters]
        kwargs: dict[str, Any] = {}
        per_model_checks: list[dict[str, Any]] = [{} for _ in other_pairs]
        for p in method.params:
            if p.scope == "shared":
                value = self._resolve(p, shared_levels, out_name, t, where=g.yaml_path)
                kwargs[p.keyword] = value
                for d in per_model_checks:
                    d[p.name] = value
                continue
            values = []
            for k, (src, info) in enumerate(other_pairs):
                levels = [s.parameters for s in g.sources if s.model == src.model] + shared_levels
                value = self._resolve(p, levels, info.name, t, where=src.yaml_path, model=src.model)
                values.append(value)
                per_model_checks[k][p.name] = value
            kwargs[p.keyword] = values
        if method.check is not None:
            for src_pair, values in zip(other_pairs or [(None, None)], per_model_checks or [kwargs]):
                try:
                    method.check(values)
                except ValueError as exc:
                    where = src_pair[0].yaml_path if src_pair and src_pair[0] is not None else "parameters"
                    raise SpecError(f"{exc} (tensor '{out_name}')", path=f"{where}.parameters") from None

        compute = self._compute_dtype([i for _, i in inputs])
        out_dtype = DTYPE_NAMES[TORCH_DTYPES[self.spec.out_dtype]] if self.spec.out_dtype else compute
        seed = tensor_seed(self.spec.hubmerge.seed, out_name) if method.random else None
        shape = inputs[0][1].shape
        if alignment is not None:  # re-indexed onto the output vocabulary
            shape = alignment.out_shape(shape, alignment.axes[0])
        self.tensors.append(PlannedTensor(
            name=out_name, shape=shape, dtype=out_dtype, compute_dtype=compute,
            base=PlannedInput(self.model_index(base_pair[0].model), base_pair[1]) if base_pair else None,
            others=tuple(PlannedInput(self.model_index(s.model), i) for s, i in other_pairs),
            kwargs=kwargs, seed=seed, vocab=alignment))

    def _resolve(self, p, levels, tensor_name, t, *, where, model=None):
        try:
            value = resolve(p.name, levels, tensor_name=tensor_name, t=t, kind=p.type)
        except ParameterValueError as exc:
            raise SpecError(f"{p.name}: {exc}", path=where) from None
        if value is None:
            if p.required:
                who = f" for {model}" if model is not None else ""
                raise SpecError(f"parameter '{p.name}' is not set{who} for tensor '{tensor_name}'",
                                path=f"{where}.parameters",
                                hint="a filter may exclude this tensor; add a catch-all {value: ...} entry")
            value = p.default
        return value

    def _check_shapes(self, name: str, inputs: list[tuple[SliceSource, TensorInfo]],
                      alignment: tokenization.VocabAlignment | None = None) -> None:
        # Vocabulary-axis tensors are compared as re-indexed onto the output tokenizer.
        shapes = {(str(s.model), alignment.out_shape(i.shape, axis) if alignment else i.shape)
                  for (s, i), axis in zip(inputs, alignment.axes if alignment else [0] * len(inputs))}
        if len({sh for _, sh in shapes}) > 1:
            detail = ", ".join(f"{m} {list(sh)}" for m, sh in sorted(shapes))
            embedding = is_output_embedding(name) or "embed" in name or "wte" in name
            hint = ("the models have different vocabulary sizes; set 'tokenizer_source: base' or "
                    "'tokenizer: {source: union}' to align them") if embedding else "the models do not share an architecture"
            raise PlanError(f"tensor '{name}' has different shapes: {detail}", hint=hint)
        for s, i in inputs:
            if not DTYPES[i.dtype].is_floating_point:
                raise PlanError(f"tensor '{name}' of {s.model} has non-float dtype {i.dtype}",
                                hint="hubmerge merges floating-point weights only")

    def _compute_dtype(self, infos: list[TensorInfo]) -> str:
        if self.spec.dtype:
            return DTYPE_NAMES[TORCH_DTYPES[self.spec.dtype]]
        dtype = infos[0].torch_dtype
        for info in infos[1:]:
            dtype = torch.promote_types(dtype, info.torch_dtype)
        return DTYPE_NAMES[dtype]


def build_plan(spec: MergeSpec, models: dict[ModelRef, ModelSource]) -> MergePlan:
    require_concrete(spec)  # search ranges must be filled in (hubmerge evolve) before anything is merged
    return Planner(spec, models).plan()


def output_config(plan: MergePlan) -> dict[str, Any]:
    """The output config.json: the reference model's, with layer count and dtype updated."""
    source = plan.models[plan.config_source]
    config = dict(source.config)
    layout: ModelLayout = analyse(source.tensors, source.config, model=source.name)
    if layout.layer_count_key is not None:
        original = config[layout.layer_count_key]
        config[layout.layer_count_key] = plan.num_layers
        # Per-layer lists (e.g. Qwen2's and Gemma2's layer_types) follow the layers actually taken.
        for key, value in list(config.items()):
            if (isinstance(value, list) and len(value) == original and key.startswith("layer")
                    and all(i < original for i in plan.layer_origin)):
                config[key] = [value[i] for i in plan.layer_origin]
    dtype_names = {v: k for k, v in TORCH_DTYPES.items()}
    out_dtype = plan.tensors[0].dtype if plan.tensors else None
    if out_dtype is not None:
        name = dtype_names[DTYPES[out_dtype]]
        if "torch_dtype" in config or "dtype" not in config:
            config["torch_dtype"] = name
        if "dtype" in config:
            config["dtype"] = name
    if plan.tokenizer is not None:
        tokenization.set_vocab_size(config, plan.tokenizer.rows)
    return config
