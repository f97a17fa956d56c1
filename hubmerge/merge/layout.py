"""What tensor names say by themselves: layer-indexed or not, embeddings, output heads.

A tensor is a layer tensor when its name has a ``<container>.N.`` part (``layers``, ``h``, ``blocks``,
``block``, ``layer``). Which stacks a model holds and which module owns each tensor is ``modules.py``'s job.
"""

from __future__ import annotations

import re
from typing import Iterable

LAYER_RE = re.compile(r"^(?P<prefix>(?:.*?\.)?(?:layers|h|blocks|block|layer))\.(?P<index>\d+)\.(?P<suffix>.+)$")
EMBEDDING_HINTS = ("embed", "wte", "wpe", "word_embeddings", "tok_embeddings", "shared")
INPUT_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight",
                            "embeddings.weight")
OUTPUT_EMBEDDING_HINTS = ("lm_head", "embed_out", "output.weight")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def is_embedding(name: str) -> bool:
    return any(h in name for h in EMBEDDING_HINTS)


def is_output_embedding(name: str) -> bool:
    return any(h in name for h in OUTPUT_EMBEDDING_HINTS)


def input_embedding_name(names: Iterable[str]) -> str | None:
    for name in sorted(names):
        if not LAYER_RE.match(name) and name.endswith(INPUT_EMBEDDING_SUFFIXES):
            return name
    return None
