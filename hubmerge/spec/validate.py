"""Meaning checks on a structurally valid spec: method, parameter names and types, input contract.

Checks that need tensor names (filters, gradients per layer, DELLA's density ± epsilon) run again in the
planner for every output tensor, still before any tensor data is read.
"""

from __future__ import annotations

from hubmerge.errors import SpecError
from hubmerge.spec import methods
from hubmerge.spec.methods import MethodContract
from hubmerge.spec.model import MergeSpec, ModelRef, Parameters, SearchRange
from hubmerge.spec.params import ParameterValueError, coerce, setting_scalars
from hubmerge.spec.schema import did_you_mean
from hubmerge.spec.search import spec_search_ranges


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
    if spec.module_parameters:
        out.append(("modules.default.parameters", spec.module_parameters, False))
    for m in spec.models:
        out.append((f"{m.yaml_path}.parameters", m.parameters, True))
    for s in spec.slices:
        out.append((f"{s.yaml_path}.parameters", s.parameters, False))
        for src in s.sources:
            out.append((f"{src.yaml_path}.parameters", src.parameters, True))
    return out


def _check_levels(spec: MergeSpec, method: MethodContract) -> None:
    for path, params, per_input in _levels(spec):
        for name, setting in params.items():
            param = method.param(name)
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
                try:
                    coerce(value, param.type)
                except ParameterValueError as exc:
                    raise SpecError(str(exc), path=f"{path}.{name}") from None


def _inputs_of(spec: MergeSpec) -> list[tuple[str, list[ModelRef], ModelRef | None]]:
    """(yaml path, input models incl. an implicitly added base, base) per merge group."""
    groups = []
    if spec.models:
        models = [m.model for m in spec.models]
        base = spec.base_model
        if base is not None and base not in models:
            models.append(base)
        groups.append(("models", models, base))
    for s in spec.slices:
        base = s.base_model or spec.base_model
        groups.append((f"{s.yaml_path}.sources", [src.model for src in s.sources], base))
    return groups


def _check_contract(spec: MergeSpec, method: MethodContract) -> None:
    for path, models, base in _inputs_of(spec):
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
        shared_levels = [spec.parameters, spec.module_parameters]
        for path, models, base in _inputs_of(spec):
            slice_levels = shared_levels + [s.parameters for s in spec.slices if path.startswith(s.yaml_path)]
            if param.scope == "shared":
                if not any(param.name in lv for lv in slice_levels):
                    raise SpecError(f"merge method '{method.name}' needs parameter '{param.name}'",
                                    path="parameters", hint=f"add 'parameters: {{{param.name}: ...}}'")
                continue
            if any(param.name in lv for lv in slice_levels):
                continue
            for model in models:
                if model == base and method.base != "ignored" and not param.includes_base:
                    continue
                own = [m.parameters for m in spec.models if m.model == model]
                own += [src.parameters for s in spec.slices for src in s.sources
                        if src.model == model and path.startswith(s.yaml_path)]
                if not any(param.name in lv for lv in own):
                    where = next((m.yaml_path for m in spec.models if m.model == model), path)
                    raise SpecError(f"model {model} has no '{param.name}' for merge method '{method.name}'",
                                    path=f"{where}.parameters",
                                    hint=f"set '{param.name}' for this model or in the top-level parameters")
