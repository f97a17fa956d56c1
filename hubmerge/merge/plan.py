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
from hubmerge.merge.layout import input_embedding_name, is_output_embedding
from hubmerge.merge.methods import MergeMethod
from hubmerge.merge.modules import ModelLayout, ModuleLayout, analyse
from hubmerge.merge.plan_groups import Group, ModuleWork, module_work
from hubmerge.merge.tokenizer import planning as tokenization
from hubmerge.sources.model import ModelSource
from hubmerge.sources.safetensors_format import DTYPE_NAMES, DTYPES, ITEM_SIZES, TensorInfo
from hubmerge.spec.model import MergeSpec, ModelRef, SliceSource
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
    copy: bool = False  # the single input as it is (a module left out of ``modules:``), no method

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_SIZES[self.dtype]

    @property
    def inputs(self) -> tuple[PlannedInput, ...]:
        return ((self.base,) if self.base is not None else ()) + self.others


@dataclass(frozen=True)
class PlannedModule:
    """One module of the output: its layers, where they came from, how its config entries change."""

    name: str
    num_layers: int  # in the output
    source_layers: int  # in the model the output's config comes from
    layer_origin: tuple[int, ...]  # per output layer: the source layer it came from
    tensors: int
    count_keys: tuple[str, ...] = ()  # dotted config paths holding the layer count
    copied_from: str | None = None  # left out of ``modules:``: copied from this model
    per_layer: tuple[str, ...] = ()
    layer_indexes: tuple[str, ...] = ()

    @property
    def count_key(self) -> str | None:
        return self.count_keys[0] if self.count_keys else None


@dataclass
class MergePlan:
    spec: MergeSpec
    method: MergeMethod
    models: list[ModelSource]
    tensors: list[PlannedTensor]
    num_layers: int  # output layers, all modules together
    config_source: int  # index of the model whose config.json the output starts from
    tokenizer_source: int
    layer_origin: list[int] = field(default_factory=list)  # per output layer of every module, in module order
    tokenizer: tokenization.OutputTokenizer | None = None  # built when the spec has tokenizer_source / tokenizer
    chat_template: str | None = None  # resolved text to write into the output tokenizer config
    modules: list[PlannedModule] = field(default_factory=list)
    layout: ModelLayout | None = None  # the config source's modules, as found
    tagalong: tuple[str, ...] = ()  # files copied from the config source beside the config (processor files)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def input_bytes(self) -> int:
        return sum(i.info.nbytes for t in self.tensors for i in t.inputs)


# Processor files a multimodal model needs beside its weights; copied from the base whatever the family.
TAGALONG_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit seed per (spec seed, output tensor name): results independent of order and splitting."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Planner:
    def __init__(self, spec: MergeSpec, models: dict[ModelRef, ModelSource], donor: ModelSource | None = None):
        self.spec = spec
        self.donor = donor
        self.method = method_for(spec)
        self.refs = list(models)
        self.sources = [models[r] for r in self.refs]
        self.layouts = {r: analyse(models[r].tensors, models[r].config, model=models[r].name) for r in self.refs}
        self.tensors: list[PlannedTensor] = []
        self.seen: set[str] = set()
        self.tokenizer: tokenization.OutputTokenizer | None = None

    def model_index(self, ref: ModelRef) -> int:
        return self.refs.index(ref)

    # -- entry point -------------------------------------------------------------------------
    def plan(self) -> MergePlan:
        self._check_model_layer_ranges()
        reference = self._config_reference()
        work = module_work(self.spec, reference, self.layouts, dict(zip(self.refs, self.sources)))
        tokenization.check_vocab_sizes(self.spec, self.sources)
        tokenizer_ref = self._tokenizer_ref(reference)
        chat_template = tokenization.chat_template_for(self.spec, self.sources)
        self.tokenizer = tokenization.prepare_tokenizer(self.spec, self.refs, self.sources, tokenizer_ref,
                                                        donor=self.donor)
        modules = [self._plan_module(w, reference) for w in work]
        widened = [t for t in self.tensors if t.dtype != t.compute_dtype]
        if widened and self.method.result_promotes_to is not None:
            logger.warning("%s writes its %s result as mergekit 0.1.5 does (%d tensors wider than the inputs); "
                           "set 'out_dtype: %s' for an output of the inputs' size", self.method.name,
                           widened[0].dtype, len(widened), str(DTYPES[widened[0].compute_dtype]).removeprefix("torch."))
        layout = self.layouts[reference]
        tagalong = tuple(dict.fromkeys(layout.tagalong + TAGALONG_FILES))
        return MergePlan(self.spec, self.method, self.sources, self.tensors, sum(m.num_layers for m in modules),
                         self.model_index(reference), self.model_index(tokenizer_ref),
                         [i for m in modules for i in m.layer_origin], self.tokenizer, chat_template, modules,
                         layout, tagalong)

    def _check_model_layer_ranges(self) -> None:
        """``models[i].layer_range``: mergekit 0.1.5 ignores it and merges every layer, so only a range over the
        whole model (or one of its modules) means what it says; any other is refused rather than ignored."""
        for _, models, _, _ in self.spec.input_groups():
            for m in models:
                if m.layer_range is None:
                    continue
                layout = self.layouts[m.model]
                counts = {layout.num_layers} | {module.num_layers for module in layout.modules}
                if m.layer_range[0] != 0 or m.layer_range[1] not in counts:
                    raise SpecError(
                        f"layer_range [{m.layer_range[0]}, {m.layer_range[1]}] is not the whole of {m.model} "
                        f"({layout.num_layers} layers); under 'models:' mergekit ignores it and merges every layer",
                        path=f"{m.yaml_path}.layer_range",
                        hint="to merge a range of layers, write it as 'slices: [{sources: [{model: ..., layer_range: "
                             "...}]}]'; to merge whole models, drop layer_range")

    def _config_reference(self) -> ModelRef:
        """The model whose config, tensor names and modules shape the output: the base, else the first model."""
        if self.spec.base_model is not None and self.spec.base_model in self.refs:
            return self.spec.base_model
        return self.spec.referenced_models()[0]

    def _plan_module(self, work: ModuleWork, reference: ModelRef) -> PlannedModule:
        module = self.layouts[reference].module(work.name)
        before = len(self.tensors)
        if work.copy_from is not None:
            self._plan_copy(work.copy_from, self.layouts[work.copy_from].module(work.name))
            return PlannedModule(work.name, module.num_layers, module.num_layers, tuple(range(module.num_layers)),
                                 len(self.tensors) - before, module.count_keys,
                                 self.sources[self.model_index(work.copy_from)].name, module.per_layer,
                                 module.layer_indexes)
        first, last = work.groups[0], work.groups[-1]
        self._plan_flat(work, first, self._module_of(first, work.name).pre)
        origin: list[int] = []
        for g in work.groups:
            n = g.num_layers
            for i in range(n):
                t = i / (n - 1) if n > 1 else 1.0  # mergekit: a one-layer slice sits at t=1
                origin.append(self._plan_layer(work, g, i, len(origin), t))
        if module.every_layer and origin:
            # Planned once per layer in mergekit, so its last layer's (t=1, the last slice's models) is written.
            self._plan_flat(work, last, self._module_of(last, work.name).every_layer, t=1.0)
        self._plan_flat(work, last, self._module_of(last, work.name).post)
        count = len(origin) if module.layers or module.every_layer else module.num_layers
        return PlannedModule(work.name, count, module.num_layers, tuple(origin), len(self.tensors) - before,
                             module.count_keys, None, module.per_layer, module.layer_indexes)

    def _module_of(self, g: Group, name: str) -> ModuleLayout:
        return self.layouts[self._reference(g)].module(name)

    def _reference(self, g: Group) -> ModelRef:
        """The model whose tensor names shape this slice's output: the base if it is an input."""
        models = [s.model for s in g.sources]
        return g.base if g.base in models else models[0]

    def _tokenizer_ref(self, default: ModelRef) -> ModelRef:
        tk = self.spec.tokenizer
        if tk is None or tk.source in ("base", "union"):  # union starts from the base's tokenizer
            return self.spec.base_model if self.spec.base_model in self.refs else default
        if tk.source not in self.refs:
            if self.donor is None:
                raise SpecError(f"tokenizer source {tk.source} is not one of the input models and was not opened",
                                path="tokenizer_source", hint="plan the spec with plan_spec, which opens it")
            return default  # a donor: its tokenizer is built in; other files come from the config source
        return tk.source

    # -- tensors ------------------------------------------------------------------------------
    def _plan_copy(self, ref: ModelRef, module: ModuleLayout) -> None:
        src = SliceSource(ref, (0, module.num_layers), {}, f"modules.{module.name}")
        g = Group([src], None, {}, src.yaml_path)
        for name in module.tensor_names:
            self._add(ModuleWork(module.name), g, name, [(src, self._find(ref, name))], t=0.0,
                      flat=name in module.pre or name in module.post, copy=True)

    def _plan_flat(self, work: ModuleWork, g: Group, names: tuple[str, ...], t: float = 0.0) -> None:
        """Non-layer tensors: the same name in every input; parameters at t=0 (mergekit's pre/post weights)."""
        for name in names:
            inputs = [(s, self._find(s.model, name)) for s in g.sources]
            self._add(work, g, name, inputs, t=t, flat=True)

    def _plan_layer(self, work: ModuleWork, g: Group, offset: int, out_index: int, t: float) -> int:
        """Plans one output layer; returns the reference's source layer it comes from."""
        reference = self._reference(g)
        ref_src = next(s for s in g.sources if s.model == reference)
        module = self._module_of(g, work.name)
        origin = ref_src.layer_range[0] + offset
        for template in module.layer_tensors(origin):
            inputs = []
            for s in g.sources:
                layer_of = self.layouts[s.model].module(work.name)
                layer = layer_of.layer_tensors(s.layer_range[0] + offset)
                if template not in layer:
                    raise PlanError(f"tensor '{layer_of.layer_name(template, s.layer_range[0] + offset)}' "
                                    f"is missing from {s.model}", hint="the models do not share an architecture")
                inputs.append((s, self.sources[self.model_index(s.model)].tensors[layer[template]]))
            self._add(work, g, module.layer_name(template, out_index), inputs, t=t)
        return origin

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

    def _add(self, work: ModuleWork, g: Group, out_name: str, inputs: list[tuple[SliceSource, TensorInfo]], t: float,
             flat: bool = False, copy: bool = False) -> None:
        if out_name in self.seen:
            raise PlanError(f"output tensor '{out_name}' would be written twice")
        self.seen.add(out_name)
        method = self.method
        uses_base = (not copy and method.base != "ignored" and g.base is not None
                     and any(s.model == g.base for s, _ in inputs))
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

        shared_levels = [g.slice_params, work.parameters, self.spec.parameters]
        kwargs: dict[str, Any] = {}
        per_model_checks: list[dict[str, Any]] = [{} for _ in other_pairs]
        for p in () if copy else method.params:
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
        if method.check is not None and not copy:
            for src_pair, values in zip(other_pairs or [(None, None)], per_model_checks or [kwargs]):
                try:
                    method.check(values)
                except ValueError as exc:
                    where = src_pair[0].yaml_path if src_pair and src_pair[0] is not None else "parameters"
                    raise SpecError(f"{exc} (tensor '{out_name}')", path=f"{where}.parameters") from None

        compute = self._compute_dtype([i for _, i in inputs])
        if self.spec.out_dtype:
            out_dtype = DTYPE_NAMES[TORCH_DTYPES[self.spec.out_dtype]]
        elif method.result_promotes_to is not None and not copy:  # arcee_fusion: float32, as mergekit writes it
            out_dtype = DTYPE_NAMES[torch.promote_types(DTYPES[compute], method.result_promotes_to)]
        else:
            out_dtype = compute
        seed = tensor_seed(self.spec.hubmerge.seed, out_name) if method.random and not copy else None
        shape = inputs[0][1].shape
        if alignment is not None:  # re-indexed onto the output vocabulary
            shape = alignment.out_shape(shape, alignment.axes[0])
        self.tensors.append(PlannedTensor(
            name=out_name, shape=shape, dtype=out_dtype, compute_dtype=compute,
            base=PlannedInput(self.model_index(base_pair[0].model), base_pair[1]) if base_pair else None,
            others=tuple(PlannedInput(self.model_index(s.model), i) for s, i in other_pairs),
            kwargs=kwargs, seed=seed, vocab=alignment, copy=copy))

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


def build_plan(spec: MergeSpec, models: dict[ModelRef, ModelSource], *,
               tokenizer_donor: ModelSource | None = None) -> MergePlan:
    """``tokenizer_donor``: the opened tokenizer source when it is not one of the inputs (``tokenizer_donor()``)."""
    require_concrete(spec)  # search ranges must be filled in (hubmerge evolve) before anything is merged
    return Planner(spec, models, tokenizer_donor).plan()
