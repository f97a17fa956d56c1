"""Search ranges in a spec: ``weight: {search: [0.0, 1.0]}`` marks a value for ``hubmerge evolve`` to find,
``{choice: [a, b, ...]}`` one for it to pick among listed values (also as ``merge_method`` itself).

The ranges are found in the spec document itself, each named by its YAML path (for example
``models[1].parameters.density`` or ``parameters.weight[0].value``); the search fills them in with
``substitute`` and gets an ordinary, mergeable document back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from hubmerge.errors import SpecError
from hubmerge.spec.model import MergeSpec, SearchChoice, SearchRange
from hubmerge.spec.schema import yaml_path

EVOLVE_HINT = "search ranges are for 'hubmerge evolve SPEC --eval ...', which writes a spec with concrete values to merge"


@dataclass(frozen=True)
class SearchParam:
    """One search dimension of a spec: where it is, which parameter it sets, its bounds (or its choices)."""

    path: str  # YAML path, e.g. models[0].parameters.weight[1]
    parameter: str  # the parameter's name (weight, density, ...; merge_method for a choice of method)
    range: SearchRange | SearchChoice

    @property
    def is_choice(self) -> bool:
        return isinstance(self.range, SearchChoice)


def _is_search(node: Any) -> bool:
    return isinstance(node, dict) and ("search" in node or "choice" in node)


def _walk(node: Any, parts: list[Any], parameter: str | None) -> Iterator[tuple[list[Any], str | None, dict]]:
    if isinstance(node, dict):
        if not parts and _is_search(node.get("merge_method")):
            yield ["merge_method"], "merge_method", node["merge_method"]
        if _is_search(node) and parameter is not None:
            yield parts, parameter, node
            return
        for key, value in node.items():
            if parts and parts[-1] == "parameters" and parameter is None:
                yield from _walk(value, parts + [key], str(key))
            else:
                yield from _walk(value, parts + [key], parameter)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, parts + [i], parameter)


def _choice(node: dict, path: str) -> SearchChoice:
    options = node.get("choice")
    extra = sorted(set(node) - {"choice"})
    if extra:
        raise SpecError(f"a choice takes only 'choice', not '{extra[0]}'", path=f"{path}.{extra[0]}")
    if not isinstance(options, list) or not options or not all(
            isinstance(o, (bool, int, float, str)) for o in options):
        raise SpecError("a choice needs a list of values (numbers, strings or booleans)", path=f"{path}.choice",
                        hint="for example {choice: [ties, dare_ties]}")
    seen: list[Any] = []
    for o in options:
        if any(type(o) is type(x) and o == x for x in seen):
            raise SpecError(f"the choice lists {o!r} twice", path=f"{path}.choice")
        seen.append(o)
    return SearchChoice(tuple(options))


def _range(node: dict, path: str) -> SearchRange | SearchChoice:
    if "choice" in node:
        return _choice(node, path)
    bounds = node.get("search")
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        raise SpecError("a search range needs two numbers, [low, high]", path=f"{path}.search",
                        hint="for example {search: [0.0, 1.0]}")
    low, high = float(bounds[0]), float(bounds[1])
    step, log = node.get("step"), bool(node.get("log", False))
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SpecError(f"search range [{bounds[0]}, {bounds[1]}] is empty: low must be below high",
                        path=f"{path}.search")
    if log and low <= 0:
        raise SpecError(f"a log-scale search needs a positive low bound, got {bounds[0]}", path=f"{path}.search",
                        hint="use a low bound above 0 (e.g. 1e-3) or drop 'log: true'")
    if step is not None:
        if log:
            raise SpecError("a search range takes either 'step' or 'log: true', not both", path=f"{path}.step")
        if not isinstance(step, (int, float)) or isinstance(step, bool) or not step > 0 or step > high - low:
            raise SpecError(f"step {step!r} must be positive and no larger than the range ({high - low:g})",
                            path=f"{path}.step")
    return SearchRange(low, high, float(step) if step is not None else None, log)


def find_search_ranges(document: Mapping[str, Any]) -> list[SearchParam]:
    """Every search range and choice in a (schema-valid) spec document, in document order (a choice of
    merge method first)."""
    out = []
    for parts, parameter, node in _walk(dict(document), [], None):
        path = yaml_path(parts)
        out.append(SearchParam(path, parameter or "", _range(node, path)))
    return out


def spec_search_ranges(spec: MergeSpec) -> list[SearchParam]:
    return find_search_ranges(spec.raw)


def require_concrete(spec: MergeSpec) -> None:
    """Refuse to merge a spec that still has search ranges, naming the first one."""
    found = spec_search_ranges(spec)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise SpecError(f"is a search range{more}, not a value: run 'hubmerge evolve' to find the values first",
                        path=found[0].path, hint=EVOLVE_HINT)


def substitute(document: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the document with each search range replaced by ``values[path]`` (every range needs one)."""
    doc = copy.deepcopy(dict(document))
    found = {p.path: p for p in find_search_ranges(doc)}
    missing = sorted(set(found) - set(values))
    if missing:
        raise SpecError("no value given for this search range", path=missing[0], hint=EVOLVE_HINT)
    unknown = sorted(set(values) - set(found))
    if unknown:
        raise SpecError("not a search range of this spec", path=unknown[0])
    for parts, _, _ in list(_walk(doc, [], None)):
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[part]
        parent[parts[-1]] = values[yaml_path(parts)]
    return doc


def midpoint(r: SearchRange | SearchChoice) -> Any:
    """A value inside the range (its centre; geometric for log ranges; a choice's first option), to plan a
    search spec with."""
    if isinstance(r, SearchChoice):
        return r.options[0]
    value = math.sqrt(r.low * r.high) if r.log else (r.low + r.high) / 2
    if r.step:
        value = r.low + round((value - r.low) / r.step) * r.step
    return value
