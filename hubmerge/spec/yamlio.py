"""Strict YAML loading: safe loader, duplicate keys are errors, errors name the line."""

from __future__ import annotations

from typing import Any

import yaml

from hubmerge.errors import SpecError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (a silent last-one-wins is a classic spec bug)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise SpecError(f"line {key_node.start_mark.line + 1}: a mapping key must be a scalar") from None
        if key in mapping:
            raise SpecError(
                f"line {key_node.start_mark.line + 1}: duplicate key {key!r}",
                hint="each key may appear once per mapping; remove or merge the duplicate",
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_documents(text: str, *, source: str = "spec") -> list[Any]:
    """Parse every YAML document in ``text``; empty documents are dropped."""
    try:
        docs = list(yaml.load_all(text, Loader=_StrictLoader))
    except SpecError as exc:
        raise SpecError(f"{source}: {exc.message}", hint=exc.hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{source}: invalid YAML{where}: {problem}", hint="check indentation and quoting") from None
    return [d for d in docs if d is not None]


def dump_yaml(data: Any) -> str:
    """Readable, stable YAML: keys in insertion order, numeric lists inline."""
    return yaml.dump(data, Dumper=_FlowListDumper, sort_keys=False, allow_unicode=True, width=100)


class _FlowListDumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = bool(data) and all(isinstance(e, (int, float, bool)) for e in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(list, _represent_list)
_FlowListDumper.add_representer(tuple, _represent_list)
