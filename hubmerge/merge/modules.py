"""A model as a set of modules (text decoder, vision tower, projector, encoder, decoder), each a stack of layers.

The modules of a checkpoint come from the family's rule in ``architectures.yml`` (data, keyed by
config.json's ``architectures``) or, for a family without a rule, from a guess on tensor names as mergekit
0.1.5 infers one: every distinct name before the first ``.<N>.`` is a stack of its own; with one stack the
model is a single module ``default``, with several each stack is a module named by that prefix and the
remaining tensors form ``default``. Layer counts come from the config (nested sections included) and are
checked against the weights.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

import yaml

from hubmerge.errors import PlanError
from hubmerge.merge.layout import LAYER_COUNT_KEYS, is_embedding

logger = logging.getLogger(__name__)

DEFAULT_MODULE = "default"
_NUMBERED = re.compile(r"^(?P<index>\d+)\.(?P<rest>.+)$")
_FIRST_NUMBER = re.compile(r"(?:^|\.)(?P<index>\d+)\.")
# Keys a guessed module's layer count may sit under, in any section of config.json.
_GUESS_COUNT_KEYS = LAYER_COUNT_KEYS + ("depth", "encoder_layers", "decoder_layers", "num_decoder_layers")


# ---------------------------------------------------------------------------------------------
# Rules (the table)


@dataclass(frozen=True)
class ModuleRule:
    name: str
    prefixes: tuple[str, ...] = ("",)
    layers: tuple[str, ...] = ()  # containers relative to the prefix; () = no layers
    count: tuple[str, ...] | int | None = None
    index_offset: int = 0
    pre: tuple[str, ...] | None = None  # None: embeddings come first
    every_layer: tuple[str, ...] = ()
    per_layer: tuple[str, ...] = ()
    layer_indexes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FamilyRule:
    architecture: str
    modules: tuple[ModuleRule, ...]
    model_type: str | None = None
    tagalong: tuple[str, ...] = ()


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _module_rule(name: str, doc: dict[str, Any]) -> ModuleRule:
    count = doc.get("count")
    return ModuleRule(
        name=name,
        prefixes=_strings(doc.get("prefix", "")),
        layers=_strings(doc.get("layers")),
        count=count if isinstance(count, int) or count is None else _strings(count),
        index_offset=int(doc.get("index_offset", 0)),
        pre=_strings(doc["pre"]) if "pre" in doc else None,
        every_layer=_strings(doc.get("every_layer")),
        per_layer=_strings(doc.get("per_layer")),
        layer_indexes=_strings(doc.get("layer_indexes")),
    )


def _family_rule(architecture: str, doc: dict[str, Any]) -> FamilyRule:
    if "modules" in doc:
        modules = tuple(_module_rule(name, m) for name, m in doc["modules"].items())
    else:
        modules = (_module_rule(DEFAULT_MODULE, doc),)
    return FamilyRule(architecture, modules, doc.get("model_type"), _strings(doc.get("tagalong")))


@lru_cache(maxsize=1)
def family_rules() -> dict[str, tuple[FamilyRule, ...]]:
    """Every rule of ``architectures.yml``, by architecture class name."""
    text = resources.files("hubmerge.merge").joinpath("architectures.yml").read_text(encoding="utf-8")
    out: dict[str, tuple[FamilyRule, ...]] = {}
    for architecture, doc in yaml.safe_load(text)["families"].items():
        docs = doc if isinstance(doc, list) else [doc]
        out[architecture] = tuple(_family_rule(architecture, d) for d in docs)
    return out


def rule_for(config: dict[str, Any]) -> FamilyRule | None:
    architectures = config.get("architectures") or []
    if not architectures or not isinstance(architectures[0], str):
        return None
    candidates = family_rules().get(architectures[0], ())
    for rule in candidates:
        if rule.model_type is None or rule.model_type == config.get("model_type"):
            return rule
    return None


# ---------------------------------------------------------------------------------------------
# Layouts (a rule applied to one checkpoint's tensor names)


@dataclass(frozen=True)
class ModuleLayout:
    name: str
    num_layers: int
    pre: tuple[str, ...]
    post: tuple[str, ...]
    # per layer: template -> tensor name (the template has "{}" where the layer number goes)
    layers: tuple[dict[str, str], ...]
    # dotted config paths holding the layer count (the first is where it was read), () when none does
    count_keys: tuple[str, ...] = ()
    index_offset: int = 0
    every_layer: tuple[str, ...] = ()  # unnumbered tensors planned once per layer (the last is written)
    per_layer: tuple[str, ...] = ()
    layer_indexes: tuple[str, ...] = ()

    @property
    def count_key(self) -> str | None:
        return self.count_keys[0] if self.count_keys else None

    def layer_tensors(self, index: int) -> dict[str, str]:
        return self.layers[index] if index < len(self.layers) else {}

    def layer_name(self, template: str, index: int) -> str:
        return template.format(index + self.index_offset)

    @property
    def tensor_names(self) -> list[str]:
        return [*self.pre, *(n for layer in self.layers for n in layer.values()), *self.every_layer, *self.post]


@dataclass(frozen=True)
class ModelLayout:
    modules: tuple[ModuleLayout, ...]
    family: str | None = None  # the rule's architecture; None when the modules were guessed from names
    tagalong: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def module(self, name: str) -> ModuleLayout | None:
        return next((m for m in self.modules if m.name == name), None)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modules]

    @property
    def num_layers(self) -> int:
        """Layers of every module together (a text model's only stack)."""
        return sum(m.num_layers for m in self.modules)

    def describe(self) -> str:
        how = f"rule for {self.family}" if self.family else "guessed from tensor names"
        parts = [f"{m.name} ({m.num_layers} layers)" for m in self.modules]
        return f"{', '.join(parts)} [{how}]"


def config_value(config: dict[str, Any], key: str) -> Any:
    """``text_config.num_hidden_layers`` -> config["text_config"]["num_hidden_layers"] (None if absent)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def analyse(names: Iterable[str], config: dict[str, Any], *, model: str) -> ModelLayout:
    """The modules of one checkpoint, from its config and tensor names (no tensor data)."""
    names = sorted(names)
    rule = rule_for(config)
    if rule is not None:
        return _apply_rule(rule, names, config, model)
    return _guess(names, config, model)


class _Builder:
    """Collects one module's tensors while names are sorted into modules."""

    def __init__(self, name: str):
        self.name = name
        self.pre: list[str] = []
        self.post: list[str] = []
        self.every: list[str] = []
        self.layers: dict[int, dict[str, str]] = {}

    def add_layer(self, index: int, template: str, name: str) -> None:
        self.layers.setdefault(index, {})[template] = name

    def build(self, model: str, *, configured: int | None, count_keys: tuple[str, ...], gaps_allowed: bool,
              rule: ModuleRule | None = None) -> ModuleLayout:
        count_key = count_keys[0] if count_keys else None
        found = (max(self.layers) + 1) if self.layers else 0
        if configured is not None and self.layers and configured != found:
            raise PlanError(f"{model}: config.json says {count_key}={configured} but the weights of module "
                            f"'{self.name}' have layers 0..{found - 1}",
                            hint="the checkpoint and its config disagree")
        missing = [i for i in range(found) if i not in self.layers]
        if missing and not gaps_allowed:
            raise PlanError(f"{model}: the weights of module '{self.name}' have no tensors for layer(s) {missing[:5]}")
        count = configured if configured is not None else found
        if self.every and configured is None:
            count = 1
        return ModuleLayout(
            self.name, count, tuple(self.pre), tuple(self.post), tuple(self.layers.get(i, {}) for i in range(found)),
            count_keys, rule.index_offset if rule else 0, tuple(self.every),
            rule.per_layer if rule else (), rule.layer_indexes if rule else ())


def _match_layer(rel: str, containers: tuple[str, ...]) -> tuple[str, int, str] | None:
    """(container head, layer number, rest) when ``rel`` is ``<container>.<N>.<rest>``."""
    for container in containers:
        head = f"{container}." if container else ""
        if rel.startswith(head):
            match = _NUMBERED.match(rel[len(head):])
            if match:
                return head, int(match["index"]), match["rest"]
    return None


def _rule_count(rule: ModuleRule, config: dict[str, Any]) -> tuple[int | None, tuple[str, ...]]:
    """The configured layer count and every listed key that holds it (a flat and a nested copy are both kept
    up to date: Hub checkpoints of some families carry both)."""
    if isinstance(rule.count, int):
        return rule.count, ()
    values = [(key, _count(config_value(config, key))) for key in rule.count or ()]
    present = [(key, v) for key, v in values if v is not None]
    if not present:
        return None, ()
    first = present[0][1]
    return first, tuple(key for key, v in present if v == first)


def _apply_rule(rule: FamilyRule, names: list[str], config: dict[str, Any], model: str) -> ModelLayout:
    claims = sorted(((p, m) for m in rule.modules for p in m.prefixes), key=lambda c: -len(c[0]))
    builders = {m.name: _Builder(m.name) for m in rule.modules}
    counts = {m.name: _rule_count(m, config) for m in rule.modules}
    unclaimed = []
    for name in names:
        claim = next(((p, m) for p, m in claims if name.startswith(p)), None)
        if claim is None:
            unclaimed.append(name)
            continue
        prefix, module = claim
        b, rel = builders[module.name], name[len(prefix):]
        hit = _match_layer(rel, module.layers)
        if hit is not None:
            head, number, rest = hit
            index = number - module.index_offset
            configured = counts[module.name][0]
            if index >= 0 and (configured is None or index < configured or not module.index_offset):
                b.add_layer(index, f"{prefix}{head}{{}}.{rest}", name)
                continue
            (b.pre if index < 0 else b.post).append(name)
        elif any(fnmatch.fnmatchcase(rel, p) for p in module.every_layer):
            b.every.append(name)
        elif _is_pre(rel, module.pre):
            b.pre.append(name)
        else:
            b.post.append(name)
    notes = ()
    if unclaimed:
        # A tensor no module of the rule names: keep it (after the first module's layers) rather than drop it.
        first = rule.modules[0].name
        builders[first].post.extend(unclaimed)
        notes = (f"{len(unclaimed)} tensor(s) outside the rule's modules kept with '{first}', "
                 f"e.g. {unclaimed[0]}",)
        logger.warning("%s: %s", model, notes[0])
    modules = tuple(builders[m.name].build(model, configured=counts[m.name][0], count_keys=counts[m.name][1],
                                           gaps_allowed=False, rule=m)
                    for m in rule.modules)
    return ModelLayout(modules, rule.architecture, rule.tagalong, notes)


def _is_pre(rel: str, patterns: tuple[str, ...] | None) -> bool:
    if patterns is None:
        return is_embedding(rel)
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def _guess(names: list[str], config: dict[str, Any], model: str) -> ModelLayout:
    """mergekit's inference: stacks by the name before the first number; every other tensor comes first."""
    stacks: dict[str, _Builder] = {}
    loose: list[str] = []
    for name in names:
        match = _FIRST_NUMBER.search(name)
        if match is None:
            loose.append(name)
            continue
        prefix = name[:match.start()]
        head = name[:match.start(1)]
        stacks.setdefault(prefix, _Builder(prefix)).add_layer(int(match["index"]), f"{head}{{}}.{name[match.end():]}",
                                                              name)
    if len(stacks) <= 1:
        b = next(iter(stacks.values()), _Builder(DEFAULT_MODULE))
        b.name, b.pre = DEFAULT_MODULE, loose
        key = next((k for k in LAYER_COUNT_KEYS if _count(config.get(k)) is not None), None)
        if key is None and b.layers:  # e.g. a text model keeping its count in text_config
            key = _guess_count_key(config, max(b.layers) + 1)
        return ModelLayout((b.build(model, configured=_count(config_value(config, key)) if key else None,
                                    count_keys=(key,) if key else (), gaps_allowed=False),))
    modules = []
    # A config key counts a stack only when one stack without gaps has that many layers (``mlp.0``/``mlp.2``
    # of a projector read as a stack are not what ``depth`` counts).
    counts = [max(b.layers) + 1 if len(b.layers) == max(b.layers) + 1 else None for b in stacks.values()]
    for b, found in zip(stacks.values(), counts):
        key = _guess_count_key(config, found) if found is not None and counts.count(found) == 1 else None
        modules.append(b.build(model, configured=None, count_keys=(key,) if key else (), gaps_allowed=True))
    rest = _Builder(DEFAULT_MODULE)
    rest.pre = loose
    if loose:
        modules.append(rest.build(model, configured=None, count_keys=(), gaps_allowed=True))
    note = (f"no module rule for {_architecture(config)}: {len(stacks)} stacks of layers guessed from tensor names",)
    return ModelLayout(tuple(modules), None, (), note)


def _architecture(config: dict[str, Any]) -> str:
    archs = config.get("architectures") or []
    return str(archs[0]) if archs else str(config.get("model_type") or "this model")


def _guess_count_key(config: dict[str, Any], found: int) -> str | None:
    """The one config key (any section) holding this layer count; None when none or several do."""
    hits = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{path}{key}.")
            elif key in _GUESS_COUNT_KEYS and _count(value) == found:
                hits.append(path + key)
    walk(config, "")
    return hits[0] if len(hits) == 1 else None
