"""From the spec's models / slices / modules to what each module of the model merges, as mergekit 0.1.5 reads them.

- ``models:`` merges every module, each over its own layers (a vision tower's layers do not share positions
  with the text decoder's: a gradient runs over each stack separately).
- ``slices:`` needs a model with a single module; on a multi-module model it is refused, as mergekit does.
- ``modules:`` gives each module its own models or slices (and parameters); a module the spec leaves out is
  copied from the base model (mergekit 0.1.5 leaves it out of the output, which then does not load).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hubmerge.errors import PlanError, SpecError
from hubmerge.merge.modules import ModelLayout
from hubmerge.sources.model import ModelSource
from hubmerge.spec.model import InputModel, MergeSpec, ModelRef, OutputSlice, Parameters, SliceSource


@dataclass
class Group:
    """One output slice of one module: its sources (layer ranges resolved), base and slice parameters."""

    sources: list[SliceSource]
    base: ModelRef | None
    slice_params: Parameters
    yaml_path: str

    @property
    def num_layers(self) -> int:
        start, end = self.sources[0].layer_range
        return end - start


@dataclass
class ModuleWork:
    """What one module of the output is made of."""

    name: str
    groups: list[Group] = field(default_factory=list)
    parameters: Parameters = field(default_factory=dict)  # modules.<name>.parameters
    yaml_path: str = ""
    copy_from: ModelRef | None = None  # left out of ``modules:``: copied from this model


def module_work(spec: MergeSpec, reference: ModelRef, layouts: dict[ModelRef, ModelLayout],
                sources: dict[ModelRef, ModelSource]) -> list[ModuleWork]:
    """One entry per module of the reference model, in its order."""
    layout = layouts[reference]
    if spec.modules:
        named = {m.name: m for m in spec.modules}
        for m in spec.modules:
            if layout.module(m.name) is None:
                raise SpecError(f"the model has no module '{m.name}'", path=m.yaml_path,
                                hint=_modules_hint(layout, sources[reference].name))
        work = []
        for module in layout.modules:
            entry = named.get(module.name)
            if entry is None:
                work.append(ModuleWork(module.name, copy_from=reference, yaml_path=f"modules.{module.name}"))
                continue
            groups = _groups(spec, entry.models, entry.slices, module.name, entry.yaml_path, layouts, sources)
            work.append(ModuleWork(module.name, groups, entry.parameters, entry.yaml_path))
        return work
    if spec.slices and len(layout.modules) > 1:
        raise PlanError(f"slices: {sources[reference].name} has several modules "
                        f"({', '.join(layout.names)}); top-level slices would cut them all to one layer range",
                        hint="use the 'modules:' form: modules: {" + layout.modules[0].name + ": {slices: [...]}} "
                             "(modules left out are copied from the base model)")
    return [ModuleWork(m.name, _groups(spec, spec.models, spec.slices, m.name, "", layouts, sources))
            for m in layout.modules]


def _modules_hint(layout: ModelLayout, model: str) -> str:
    return f"{model} has modules: {layout.describe()}"


def _groups(spec: MergeSpec, models: tuple[InputModel, ...], slices: tuple[OutputSlice, ...], module: str,
            prefix: str, layouts: dict[ModelRef, ModelLayout], sources: dict[ModelRef, ModelSource]) -> list[Group]:
    def layers_of(ref: ModelRef, where: str) -> int:
        found = layouts[ref].module(module)
        if found is None:
            raise PlanError(f"{where}: {sources[ref].name} has no module '{module}'",
                            hint=_modules_hint(layouts[ref], sources[ref].name))
        return found.num_layers

    if models:
        path = f"{prefix}.models" if prefix else "models"
        srcs = [SliceSource(m.model, (0, layers_of(m.model, m.yaml_path)), m.parameters, m.yaml_path) for m in models]
        if spec.base_model is not None and spec.base_model not in [s.model for s in srcs]:
            srcs.append(SliceSource(spec.base_model, (0, layers_of(spec.base_model, "base_model")), {}, "base_model"))
        counts = {s.model: s.layer_range[1] for s in srcs}
        if len(set(counts.values())) > 1:
            where = f" in module '{module}'" if module != "default" else ""
            raise PlanError(f"{path}: models to merge have different layer counts{where}: "
                            + ", ".join(f"{sources[m].name} has {n}" for m, n in counts.items()),
                            hint="use 'slices' with matching layer_range to merge models of different depth")
        return [Group(srcs, spec.base_model, {}, path)]
    groups = []
    for s in slices:
        for src in s.sources:
            available = layers_of(src.model, src.yaml_path)
            if src.layer_range[1] > available:
                where = f"module '{module}' of " if module != "default" else ""
                raise PlanError(f"{src.yaml_path}.layer_range: {list(src.layer_range)} goes past the {available} "
                                f"layers of {where}{sources[src.model].name}",
                                hint=f"layer_range is [first, last+1) within 0..{available}")
        groups.append(Group(list(s.sources), s.base_model or spec.base_model, s.parameters, s.yaml_path))
    return groups
