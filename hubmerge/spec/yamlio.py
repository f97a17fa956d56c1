"""Spec YAML in and out: strict bounded loading (``hubmerge.spec.bounded``), readable dumping."""

from __future__ import annotations

from typing import Any

import yaml

from hubmerge.spec.bounded import MAX_YAML_BYTES
from hubmerge.spec.bounded import load_yaml_documents as load_yaml_documents_bounded

MAX_SPEC_BYTES = MAX_YAML_BYTES  # a spec file larger than this is refused before it is parsed


def load_yaml_documents(text: str | bytes, *, source: str = "spec") -> list[Any]:
    """Parse every YAML document of a spec text; empty documents are dropped. The safe loader with duplicate
    keys refused and the spec budgets of ``hubmerge.spec.bounded`` (size, nodes with aliases expanded, depth,
    entries per list)."""
    return load_yaml_documents_bounded(text, source=source, max_bytes=MAX_SPEC_BYTES)


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
