"""Any-architecture layout from tensor names alone: layer-indexed tensors, pre- and post-layer tensors.

No per-architecture tables: a tensor belongs to layer N when its name has a ``<container>.N.`` part
(``layers``, ``h``, ``blocks``, ``block``, ``layer``), which covers Llama, Mistral, Qwen2, Gemma2, GPT-2,
Phi and friends. Non-layer tensors are pre-layer when they are embeddings, post-layer otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from hubmerge.errors import PlanError

LAYER_RE = re.compile(r"^(?P<prefix>(?:.*?\.)?(?:layers|h|blocks|block|layer))\.(?P<index>\d+)\.(?P<suffix>.+)$")
EMBEDDING_HINTS = ("embed", "wte", "wpe", "word_embeddings", "tok_embeddings", "shared")
INPUT_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight",
                            "embeddings.weight")
OUTPUT_EMBEDDING_HINTS = ("lm_head", "embed_out", "output.weight")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def layer_template(prefix: str, suffix: str) -> str:
    return f"{prefix}.{{}}.{suffix}"


@dataclass(frozen=True)
class ModelLayout:
    num_layers: int
    pre: tuple[str, ...]
    post: tuple[str, ...]
    # per layer: template -> actual tensor name (template has "{}" where the index goes)
    layers: tuple[dict[str, str], ...]
    layer_count_key: str | None

    def layer_tensors(self, index: int) -> dict[str, str]:
        return self.layers[index]


def config_layer_count(config: dict[str, Any]) -> tuple[str | None, int | None]:
    for key in LAYER_COUNT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return key, value
    return None, None


def analyse(names: Iterable[str], config: dict[str, Any], *, model: str) -> ModelLayout:
    layers: dict[int, dict[str, str]] = {}
    pre, post = [], []
    for name in sorted(names):
        match = LAYER_RE.match(name)
        if match:
            layers.setdefault(int(match["index"]), {})[layer_template(match["prefix"], match["suffix"])] = name
        elif is_embedding(name):
            pre.append(name)
        else:
            post.append(name)
    key, configured = config_layer_count(config)
    found = (max(layers) + 1) if layers else 0
    if configured is not None and layers and configured != found:
        raise PlanError(f"{model}: config.json says {key}={configured} but the weights have layers 0..{found - 1}",
                        hint="the checkpoint and its config disagree")
    missing = [i for i in range(found) if i not in layers]
    if missing:
        raise PlanError(f"{model}: the weights have no tensors for layer(s) {missing[:5]}")
    count = configured if configured is not None else found
    return ModelLayout(count, tuple(pre), tuple(post), tuple(layers[i] for i in range(found)), key)


def is_embedding(name: str) -> bool:
    return any(h in name for h in EMBEDDING_HINTS)


def is_output_embedding(name: str) -> bool:
    return any(h in name for h in OUTPUT_EMBEDDING_HINTS)


def input_embedding_name(names: Iterable[str]) -> str | None:
    for name in sorted(names):
        if not LAYER_RE.match(name) and name.endswith(INPUT_EMBEDDING_SUFFIXES):
            return name
    return None
