"""Meaning checks on a structurally valid spec: method, parameter names and types, input contract.

Checks that need tensor names (filters, gradients per layer, DELLA's density ± epsilon) run again in the
planner for every output tensor, still before any tensor data is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from hubmerge.errors import SpecError
from hubmerge.spec import methods
from hubmerge.spec.methods import MethodContract
from hubmerge.spec.model import MergeSpec, ModelRef, Parameters, SearchChoice, SearchRange
from hubmerge.spec.params import ParameterValueError, coerce, setting_scalars
from hubmerge.spec.schema import did_you_mean
from hubmerge.spec.search import spec_search_ranges

logger = logging.getLogger(__name__)


def method_for(spec: MergeSpec) -> MethodContract:
    try:
        return methods.lookup(spec.merge_method)
    except KeyError:
        names = sorted(methods.entries())
        suggestion = did_you_mean(spec.merge_method, names)
        hint = f"did you mean '{suggestion}'?" if suggestion else "available: " + ", ".join(names)
        raise SpecError(f"unknown merge method '{spec.merge_method}'", path="merge_method", hint=hint) from None


def check_spec(spec: MergeSpec) -> None:
    method = method_for(spec)
    spec_search_ranges(spec)  # a search range's own bounds (hubmerge evolve fills them in)
    _check_levels(spec, method)
    _check_contract(spec, method)
    _check_required(spec, method)


def _levels(spec: MergeSpec) -> list[tuple[str, Parameters, bool]]:
    """(yaml path, parameters, is_per_input) for every parameters mapping in the spec."""
    out: list[tuple[str, Parameters, bool]] = [("parameters", spec.parameters, False)]
    for module in spec.modules:
        if module.parameters:
            out.append((f"{module.yaml_path}.parameters", module.parameters, False))
    for _, models, slices, _ in spec.input_groups():
        for m in models:
            out.append((f"{m.yaml_path}.parameters", m.parameters, True))
        for s in slices:
            out.append((f"{s.yaml_path}.parameters", s.parameters, False))
            for src in s.sources:
                out.append((f"{src.yaml_path}.parameters", src.parameters, True))
    return out


def _check_levels(spec: MergeSpec, method: MethodContract) -> None:
    for path, params, per_input in _levels(spec):
        for name, setting in params.items():
            param = method.param(name)
            if param is None and name in _other_methods_params(method):
                # Published recipes carry these (int8_mask on linear, normalize on slerp): mergekit 0.1.5 never
                # reads a parameter its method does not declare, so neither do we; a typo is still refused.
                logger.warning("%s.%s: merge method '%s' takes no '%s' (another method's parameter); ignored, as "
                               "mergekit ignores it", path, name, method.name, name)
                continue
            if param is None:
                suggestion = did_you_mean(name, method.param_names)
                if suggestion:
                    hint = f"did you mean '{suggestion}'?"
                elif method.param_names:
                    hint = f"{method.name} takes: {', '.join(method.param_names)}"
                else:
                    hint = f"{method.name} takes no parameters"
                raise SpecError(f"unknown parameter '{name}' for merge method '{method.name}'",
                                path=f"{path}.{name}", hint=hint)
            if per_input and param.scope == "shared":
                raise SpecError(
                    f"'{name}' is shared by all inputs of {method.name}; a per-model value would be ignored",
                    path=f"{path}.{name}",
                    hint="move it to the top-level (or slice-level) 'parameters'",
                )
            for value in setting_scalars(setting):
                if isinstance(value, SearchRange):
                    if param.type not in (int, float):
                        raise SpecError(f"'{name}' is a {param.type.__name__} parameter; only numbers can be searched",
                                        path=f"{path}.{name}", hint=f"give '{name}' a value instead of a search range")
                    continue
                for option in value.options if isinstance(value, SearchChoice) else (value,):
                    try:
                        number = coerce(option, param.type)
                    except ParameterValueError as exc:
                        raise SpecError(str(exc) + (" (a choice's option)" if option is not value else ""),
                                        path=f"{path}.{name}") from None
                    _check_range(name, number, f"{path}.{name}", method.name)


# Documented ranges, checked when the spec is read. ``t`` of slerp/nuslerp may extrapolate (mergekit allows it on
# purpose): outside [0, 1] only warns.
DENSITY_PARAMS = ("density",)
EXTRAPOLATING = ("t",)


def _check_range(name: str, value: object, path: str, method: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if name in DENSITY_PARAMS and not 0 < value <= 1:
        raise SpecError(f"density must be in (0, 1], got {value}", path=path,
                        hint="the fraction of each task vector kept; 1 keeps everything")
    if name in EXTRAPOLATING and not 0 <= value <= 1:
        logger.warning("%s: t = %s lies outside [0, 1]: %s extrapolates past its end points (allowed, as mergekit "
                       "allows it)", path, value, method)


def _other_methods_params(method: MethodContract) -> set[str]:
    """Parameter names that some other mergekit method takes."""
    return {n for m in methods.entries().values() if m.name != method.name and getattr(m, "in_mergekit", True)
            for n in m.param_names}


@dataclass
class _Group:
    """One merge group (the models of the top level or of a module, or one slice) and its parameter levels."""

    path: str
    models: list[ModelRef]  # an implicitly added base included
    base: ModelRef | None
    shared: list[Parameters]  # slice, module and top-level parameters
    own: dict[ModelRef, Parameters] = field(default_factory=dict)  # each input's own parameters
    where: dict[ModelRef, str] = field(default_factory=dict)  # each input's YAML path


def _inputs_of(spec: MergeSpec) -> list[_Group]:
    groups = []
    for prefix, models_in, slices, module_params in spec.input_groups():
        levels = [module_params, spec.parameters]
        if models_in:
            g = _Group(f"{prefix}.models" if prefix else "models", [m.model for m in models_in], spec.base_model,
                       levels, {m.model: m.parameters for m in models_in}, {m.model: m.yaml_path for m in models_in})
            if g.base is not None and g.base not in g.models:
                g.models.append(g.base)
            groups.append(g)
        for s in slices:
            groups.append(_Group(f"{s.yaml_path}.sources", [src.model for src in s.sources],
                                 s.base_model or spec.base_model, [s.parameters] + levels,
                                 {src.model: src.parameters for src in s.sources}))
    return groups


def _check_contract(spec: MergeSpec, method: MethodContract) -> None:
    for g in _inputs_of(spec):
        path, models, base = g.path, g.models, g.base
        if method.base == "required" and base is None:
            raise SpecError(f"merge method '{method.name}' needs a base model", path="base_model",
                            hint="add 'base_model: <the model the others were fine-tuned from>'")
        if method.base == "required" and base not in models:
            raise SpecError(f"the base model {base} is not among the inputs of this slice", path=path,
                            hint="add a source for the base model to the slice")
        count = len(models)
        if count < method.min_inputs or (method.max_inputs is not None and count > method.max_inputs):
            if method.max_inputs == method.min_inputs:
                want = f"exactly {method.min_inputs}"
            elif method.max_inputs is None:
                want = f"at least {method.min_inputs}"
            else:
                want = f"{method.min_inputs} to {method.max_inputs}"
            base_note = " (counting the base model)" if method.base != "ignored" else ""
            raise SpecError(f"merge method '{method.name}' takes {want} input models{base_note}, got {count}",
                            path=path)


def _check_required(spec: MergeSpec, method: MethodContract) -> None:
    """A required parameter must be set at some level that reaches each input that needs it."""
    for param in method.params:
        if not param.required:
            continue
        for g in _inputs_of(spec):
            if param.scope == "shared":
                if not any(param.name in lv for lv in g.shared):
                    raise SpecError(f"merge method '{method.name}' needs parameter '{param.name}'",
                                    path="parameters", hint=f"add 'parameters: {{{param.name}: ...}}'")
                continue
            if any(param.name in lv for lv in g.shared):
                continue
            for model in g.models:
                if model == g.base and method.base != "ignored" and not param.includes_base:
                    continue
                if param.name not in g.own.get(model, {}):
                    raise SpecError(f"model {model} has no '{param.name}' for merge method '{method.name}'",
                                    path=f"{g.where.get(model, g.path)}.parameters",
                                    hint=f"set '{param.name}' for this model or in the top-level parameters")
