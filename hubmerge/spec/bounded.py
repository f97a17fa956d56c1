"""Bounded parsing of untrusted text: YAML and JSON that cannot make us hang, blow up or print a traceback.

Everything hubmerge reads from a file or the Hub that somebody else wrote (spec files, card front matter,
safetensors headers, shard indexes, adapter and tokenizer configs) goes through here. Each parser refuses,
with one line naming the source and the limit it hit, before it builds big Python objects:

- ``load_yaml_documents`` / ``load_yaml``: the safe loader (no Python tags), duplicate keys refused, and
  while the document is *composed* (before any object is constructed) a budget on the size of the text,
  the nesting depth, the entries of any one list or mapping (named by its YAML path), and the node count
  *with aliases expanded* (so a "billion laughs" alias bomb of a few hundred bytes is refused at once).
- ``load_json``: a size bound, no ``RecursionError`` from deep nesting, no ``ValueError`` from Python's
  int-string limit (integer literals longer than ``MAX_INT_DIGITS`` are refused), optionally no duplicate
  keys (JSON's last-one-wins hides crafted safetensors headers).
- ``read_bounded``: at most ``max_bytes`` of a file, so ``/dev/zero`` or a 10 GB file is refused at once.

The error class is the caller's (``SpecError`` for specs, ``SourceError`` for model files, ...), so a refusal
fits the hierarchy in ``hubmerge.errors``. Messages never echo the bytes that were refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from hubmerge.errors import HubmergeError, SourceError, SpecError

# Defaults: generous for any real spec or card, small enough to refuse hostile ones in well under a second.
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 200_000  # scalars + lists + mappings, counted with aliases expanded
MAX_YAML_DEPTH = 64
MAX_YAML_ITEMS = 10_000  # entries of one list or mapping (models, slices, experts, ...)
MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 100
MAX_SHOWN = 200  # characters of a value or key an error message may show

_LONG_DIGITS = re.compile(rb"\d{%d,}" % (MAX_INT_DIGITS + 1))


def shorten(text: object, limit: int = MAX_SHOWN) -> str:
    """``repr``-like display of a value for an error line, cut to ``limit`` characters."""
    shown = text if isinstance(text, str) else repr(text)
    return shown if len(shown) <= limit else shown[:limit] + f"... ({len(shown)} characters)"


def describe_size(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def read_bounded(path: str | Path, *, max_bytes: int, source: str | None = None,
                 error: type[HubmergeError] = SourceError) -> bytes:
    """The bytes of a file, refusing one larger than ``max_bytes`` without reading past the bound."""
    path = Path(path)
    source = source or str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{source}: file not found") from None
    except IsADirectoryError:
        raise error(f"{source}: is a folder, not a file") from None
    except OSError as exc:
        raise error(f"{source}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > max_bytes:
        raise error(f"{source}: larger than the {describe_size(max_bytes)} limit for this file")
    return data


# ---------------------------------------------------------------------------------------------
# YAML


class _Refused(Exception):
    """Raised inside the loader; turned into the caller's error class with the source prefixed."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class _BoundedComposer(yaml.composer.Composer):
    """A composer that keeps count: depth, entries per collection (with their YAML path) and the expanded size
    of every node (an alias weighs what its anchor weighs), refusing as soon as a budget is exceeded."""

    limits: tuple[int, int, int] = (MAX_YAML_NODES, MAX_YAML_DEPTH, MAX_YAML_ITEMS)

    def _bounded_init(self, max_nodes: int, max_depth: int, max_items: int) -> None:
        self.limits = (max_nodes, max_depth, max_items)
        self._weights: dict[int, int] = {}
        self._keep: list[yaml.Node] = []  # keeps node ids valid while weights are keyed by them
        self._path: list[str] = []
        self._total = 0

    def _where(self) -> str:
        out = ""
        for part in self._path:
            out += part if part.startswith("[") else (f".{part}" if out else part)
        out = out or "<root>"
        return out if len(out) <= 120 else out[:60] + " ... " + out[-50:]

    def compose_document(self):
        node = super().compose_document()
        self._weights.clear()
        self._keep.clear()
        self._total = 0
        return node

    def compose_node(self, parent, index):
        max_nodes, max_depth, _ = self.limits
        if self.check_event(yaml.events.AliasEvent):
            anchor = self.peek_event().anchor
            node = super().compose_node(parent, index)
            weight = self._weights.get(id(node))
            if weight is None:
                raise _Refused(f"{self._where()}: alias *{shorten(anchor, 40)} refers to a node that contains it",
                               hint="recursive YAML structures are not allowed")
            self._count(weight)
            return node
        if len(self._path) >= max_depth:
            raise _Refused(f"{self._where()}: nested deeper than the limit of {max_depth} levels")
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.SequenceNode):
            weight = 1 + sum(self._weights[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            weight = 1 + sum(self._weights[id(k)] + self._weights[id(v)] for k, v in node.value)
        else:
            weight = 1
            self._count(1)
        if weight > max_nodes:
            self._refuse_nodes()
        self._weights[id(node)] = weight
        self._keep.append(node)
        return node

    def _count(self, weight: int) -> None:
        self._total += weight
        if self._total > self.limits[0]:
            self._refuse_nodes()

    def _refuse_nodes(self):
        raise _Refused(f"{self._where()}: more than {self.limits[0]} YAML nodes (aliases expanded)",
                       hint="the document is too large, or an alias expansion bomb")

    def compose_sequence_node(self, anchor):
        start_event = self.get_event()
        tag = start_event.tag
        if tag is None or tag == "!":
            tag = self.resolve(yaml.SequenceNode, None, start_event.implicit)
        node = yaml.SequenceNode(tag, [], start_event.start_mark, None, flow_style=start_event.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        index = 0
        while not self.check_event(yaml.events.SequenceEndEvent):
            if index >= self.limits[2]:
                raise _Refused(f"{self._where()}: more than {self.limits[2]} entries (the limit for one list)")
            self._path.append(f"[{index}]")
            node.value.append(self.compose_node(node, index))
            self._path.pop()
            index += 1
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor):
        start_event = self.get_event()
        tag = start_event.tag
        if tag is None or tag == "!":
            tag = self.resolve(yaml.MappingNode, None, start_event.implicit)
        node = yaml.MappingNode(tag, [], start_event.start_mark, None, flow_style=start_event.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        while not self.check_event(yaml.events.MappingEndEvent):
            if len(node.value) >= self.limits[2]:
                raise _Refused(f"{self._where()}: more than {self.limits[2]} keys (the limit for one mapping)")
            key = self.compose_node(node, None)
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            self._path.append(shorten(name, 60))
            value = self.compose_node(node, key)
            self._path.pop()
            node.value.append((key, value))
        node.end_mark = self.get_event().end_mark
        return node


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    # Keys written in this mapping must be unique; keys a ``<<: *anchor`` merge brings in may be overridden by
    # them (YAML's merge-key rule, as PyYAML's safe_load and so mergekit read it). flatten_mapping puts the
    # merged pairs first, so the written value is the one kept; of two merged mappings, the first wins.
    own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    written: set[Any] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise _Refused(f"line {key_node.start_mark.line + 1}: a mapping key must be a scalar") from None
        if id(key_node) in own:
            if key in written:
                raise _Refused(f"line {key_node.start_mark.line + 1}: duplicate key {shorten(repr(key), 80)}",
                               hint="each key may appear once per mapping; remove or merge the duplicate")
            written.add(key)
        elif key in mapping:
            continue
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


try:  # libyaml scans and parses; the composer (with the budgets) is ours
    from yaml.cyaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    _Parser = None


if _Parser is not None:
    class _BoundedLoader(_BoundedComposer, _Parser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        def __init__(self, stream):
            _Parser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
else:  # pragma: no cover - PyYAML without libyaml
    class _BoundedLoader(_BoundedComposer, yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,
                         yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        def __init__(self, stream):
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            _BoundedComposer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

_BoundedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_documents(data: str | bytes, *, source: str, max_bytes: int = MAX_YAML_BYTES,
                        max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_YAML_DEPTH,
                        max_items: int = MAX_YAML_ITEMS, error: type[HubmergeError] = SpecError) -> list[Any]:
    """Every YAML document in ``data`` (empty ones dropped), within the budgets; else ``error`` naming
    ``source`` and the limit. ``data`` longer than ``max_bytes`` is refused; if its first ``max_bytes`` already
    break another budget (say 10^6 models), that one is named instead, since it says more."""
    raw = data.encode("utf-8", errors="surrogatepass") if isinstance(data, str) else bytes(data)
    too_big = len(raw) > max_bytes
    if too_big:
        raw = raw[:max_bytes]
    try:
        text = raw.decode("utf-8", errors="strict" if not too_big else "ignore")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise error(f"{source}: contains NUL bytes; not a YAML text file")
    docs: list[Any] = []
    loader = None
    try:
        loader = _BoundedLoader(text)
        loader._bounded_init(max_nodes, max_depth, max_items)
        while loader.check_node():
            docs.append(loader.construct_document(loader.get_node()))
    except _Refused as exc:
        raise error(f"{source}: {exc.message}", hint=exc.hint) from None
    except yaml.YAMLError as exc:
        if too_big:
            raise _size_error(error, source, max_bytes) from None
        mark = getattr(exc, "problem_mark", None)
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in str(getattr(exc, "problem", "")):
            line = f"line {mark.line + 1}: " if mark is not None else ""
            raise error(f"{source}: {line}YAML tags like this one are not allowed ({shorten(exc.problem, 120)})",
                        hint="specs are plain YAML: mappings, lists, strings and numbers") from None
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise error(f"{source}: invalid YAML{where}: {shorten(problem)}", hint="check indentation and quoting") from None
    except RecursionError:
        raise error(f"{source}: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    if too_big:
        raise _size_error(error, source, max_bytes)
    return [d for d in docs if d is not None]


def _size_error(error: type[HubmergeError], source: str, max_bytes: int) -> HubmergeError:
    return error(f"{source}: larger than the {describe_size(max_bytes)} limit for a YAML document")


def load_yaml(data: str | bytes, *, source: str, **limits: Any) -> Any:
    """The single YAML document in ``data`` (None when empty); see ``load_yaml_documents``."""
    error = limits.get("error", SpecError)
    docs = load_yaml_documents(data, source=source, **limits)
    if len(docs) > 1:
        raise error(f"{source}: holds {len(docs)} YAML documents; one is expected")
    return docs[0] if docs else None


# ---------------------------------------------------------------------------------------------
# JSON


class _Duplicate(Exception):
    pass


class _HugeInt(Exception):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _HugeInt()
    return int(digits)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return out


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return depth


def load_json(data: str | bytes, *, source: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH,
              unique_keys: bool = False, error: type[HubmergeError] = SourceError) -> Any:
    """``json.loads`` within bounds: size, nesting depth, integer literal length (and, with ``unique_keys``,
    no key twice in one object); else ``error`` naming ``source`` and the limit."""
    if len(data) > max_bytes:
        raise error(f"{source}: larger than the {describe_size(max_bytes)} limit for this file")
    raw = data.encode("utf-8", errors="surrogatepass") if isinstance(data, str) else bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not valid JSON (not UTF-8 at byte {exc.start})") from None
    options: dict[str, Any] = {}
    if _LONG_DIGITS.search(raw):
        options["parse_int"] = _bounded_int
    if unique_keys:
        options["object_pairs_hook"] = _unique_pairs
    try:
        value = json.loads(text, **options)
    except _HugeInt:
        raise error(f"{source}: an integer literal longer than {MAX_INT_DIGITS} digits") from None
    except _Duplicate as exc:
        raise error(f"{source}: key {shorten(repr(exc.args[0]), 80)} appears twice in one object",
                    hint="the file is corrupt or crafted") from None
    except RecursionError:
        raise error(f"{source}: nested deeper than the limit of {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})") from None
    except ValueError:  # e.g. the int-string conversion limit of a float-like literal
        raise error(f"{source}: not valid JSON (a number out of range)") from None
    if json_depth(value) > max_depth:
        raise error(f"{source}: nested deeper than the limit of {max_depth} levels")
    return value
