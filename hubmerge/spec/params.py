"""Parameter resolution as pure functions: scalars, gradients, filters and precedence (mergekit semantics).

Precedence, highest first: the input's own parameters (``models[i]`` / ``slices[].sources[j]``), the
slice's, the module's, the top level. A level whose filters do not match falls through to the next.
Shared parameters skip the per-input level.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from hubmerge.spec.model import Conditional, Parameters, Scalar, SearchChoice, SearchRange, Setting


class ParameterValueError(ValueError):
    """A value cannot be converted to the parameter's type (the caller adds the YAML path)."""


def coerce(value: Any, kind: type) -> Any:
    """Convert one scalar to the parameter's type, as mergekit's validation does (lax, but not silly)."""
    if isinstance(value, (SearchRange, SearchChoice)):
        raise ParameterValueError("is a search range, not a value: run 'hubmerge evolve' to find it first")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        raise ParameterValueError(f"expected true/false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ParameterValueError(f"expected a number, got {value!r}")
        if isinstance(value, str):
            # YAML 1.1 reads ``1e-5`` as a string; mergekit accepts it as a number, so do we.
            try:
                value = float(value.strip())
            except ValueError:
                raise ParameterValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(float(value)):
            raise ParameterValueError(f"is not a finite number ({value!r})")
        if kind is int:
            if float(value) != int(value):
                raise ParameterValueError(f"expected an integer, got {value!r}")
            return int(value)
        return float(value)
    if kind is str:
        if isinstance(value, str):
            return value
        raise ParameterValueError(f"expected a string, got {value!r}")
    raise TypeError(kind)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate(setting: Setting, *, tensor_name: str, t: float, kind: type) -> Any:
    """The value of one setting for a tensor at layer position ``t``; None when no filter matches.

    Gradients interpolate piecewise-linearly at ``t * (n - 1)`` for numbers, and pick the step
    ``int(t * (n - 1))`` for booleans and strings.
    """
    if isinstance(setting, tuple) and setting and all(isinstance(c, Conditional) for c in setting):
        for cond in setting:
            if cond.filter is None or cond.filter == "*" or (tensor_name and cond.filter in tensor_name):
                return evaluate(cond.value, tensor_name=tensor_name, t=t, kind=kind)
        return None
    if isinstance(setting, tuple):
        if not setting:
            return None
        values = [coerce(v, kind) for v in setting]
        if not all(_is_number(v) for v in values):
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return coerce((1 - frac) * values[i0] + frac * values[i1], kind)
    return coerce(setting, kind)


def resolve(
    name: str,
    levels: Iterable[Parameters | None],
    *,
    tensor_name: str,
    t: float,
    kind: type,
) -> Any:
    """First non-None value for ``name`` across precedence levels (highest first); None if unset."""
    for level in levels:
        if level and name in level:
            value = evaluate(level[name], tensor_name=tensor_name, t=t, kind=kind)
            if value is not None:
                return value
    return None


def setting_scalars(setting: Setting) -> list[Scalar]:
    """Every literal scalar inside a setting (for validation before any tensor is known)."""
    if isinstance(setting, tuple):
        out: list[Scalar] = []
        for item in setting:
            if isinstance(item, Conditional):
                out.extend(setting_scalars(item.value) if isinstance(item.value, tuple) else [item.value])
            else:
                out.append(item)
        return out
    return [setting]
