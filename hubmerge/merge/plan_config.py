"""The output config.json: the config source's, with each module's layer count, per-layer lists and dtype updated."""

from __future__ import annotations

import copy
import logging
from typing import Any

from hubmerge.merge.plan import MergePlan, PlannedModule
from hubmerge.merge.tokenizer import planning as tokenization
from hubmerge.sources.safetensors_format import DTYPES

logger = logging.getLogger(__name__)


def output_config(plan: MergePlan) -> dict[str, Any]:
    source = plan.models[plan.config_source]
    config = copy.deepcopy(source.config)
    for module in plan.modules:
        _update_module(config, module)
    # The dtype the merge ran in (or out_dtype), as mergekit records it; a method whose results are wider than
    # that (arcee_fusion's float32) does not change what the config says.
    first = plan.tensors[0] if plan.tensors else None
    out_dtype = (first.dtype if plan.spec.out_dtype else first.compute_dtype) if first is not None else None
    if out_dtype is not None:
        name = str(DTYPES[out_dtype]).removeprefix("torch.")
        if "torch_dtype" in config or "dtype" not in config:
            config["torch_dtype"] = name
        if "dtype" in config:
            config["dtype"] = name
    if plan.tokenizer is not None:
        tokenization.set_vocab_size(config, plan.tokenizer.rows)
    return config


def _update_module(config: dict[str, Any], module: PlannedModule) -> None:
    """Layer count where the config keeps it (nested sections too); lists with one entry per layer re-indexed
    (``layer_types``, ...), lists of layer numbers renumbered (``moe_layers``), when slices changed the layers."""
    unchanged = module.layer_origin == tuple(range(module.source_layers))
    if not module.count_keys:
        if module.num_layers != module.source_layers:
            logger.warning("module '%s' now has %d layers, but no config entry holds its layer count",
                           module.name, module.num_layers)
        return
    for count_key in module.count_keys:
        *path, key = count_key.split(".")
        section: Any = config
        for part in path:
            section = section[part]
        section[key] = module.num_layers
        if not unchanged:
            _reindex_lists(section, module)


def _reindex_lists(section: dict[str, Any], module: PlannedModule) -> None:
    original, origin = module.source_layers, module.layer_origin
    for name, value in list(section.items()):
        if not isinstance(value, list):
            continue
        if (name.startswith("layer") or name in module.per_layer) and len(value) == original:
            section[name] = [value[i] for i in origin]
        elif name in module.layer_indexes and all(isinstance(i, int) for i in value):
            section[name] = [out for out, src in enumerate(origin) if src in set(value)]
