"""The MoE job, end to end: plan from headers, router rows from the prompts, every output tensor streamed
part by part from its source (one expert's tensor at a time, also into fused tensors), then config,
tokenizer, recipe and card, the folder renamed into place when complete. ``run_merge`` hands MoE recipes
here, so ``merge``, ``push``, ``reproduce``, ``verify`` and ``sync`` run them like any merge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

from hubmerge.errors import SourceError
from hubmerge.merge.executor import pick_device
from hubmerge.merge.layout import input_embedding_name
from hubmerge.merge.moe.config import config_text
from hubmerge.merge.moe.gates import (
    cheap_embedding,
    degenerate_layers,
    embed_rows,
    gate_rows,
    random_rows,
    uniform_rows,
)
from hubmerge.merge.moe.method import bind_parts
from hubmerge.merge.moe.plan import MoEPlan, plan_moe
from hubmerge.merge.plan import tensor_seed
from hubmerge.merge.tokenizer.build import TokenizerFiles
from hubmerge.merge.tokenizer.files import save_tokenizer
from hubmerge.output.shards import DEFAULT_MAX_SHARD_SIZE, ShardEntry, layout_shards
from hubmerge.pipeline.moe_hidden import layer_inputs_per_batch, routing_tokenizer, tokenize_prompts
from hubmerge.pipeline.output_folder import (
    MergeOptions,
    MergeResult,
    plan_fingerprint,
    recipe_document,
    stream_to_folder,
    write_shard_index,
)
from hubmerge.spec.moe import MoESpec
from hubmerge.spec.yamlio import dump_yaml

logger = logging.getLogger(__name__)

RECIPE_FILE = "mergekit_moe_config.yml"  # as mergekit-moe names it
# Parts are copied, not computed: a short read-ahead keeps the disk busy, and leaves memory to the router
# rows computed beside them.
PREFETCH_BYTES = 64 * 1024 * 1024


def run_moe(spec: MoESpec, out_dir: str | Path, options: MergeOptions | None = None, *, hub: Any = None,
            card_writer: Callable | None = None) -> MergeResult:
    options = options or MergeOptions()
    if options.only_shards is not None:
        from hubmerge.errors import HubmergeError

        raise HubmergeError("an MoE cannot be merged in parts", hint="push it in one piece (without --part)")
    target = Path(out_dir)
    max_shard = options.max_shard_size or spec.hubmerge.max_shard_size or DEFAULT_MAX_SHARD_SIZE
    plan = plan_moe(spec, base_dir=options.base_dir, hub=hub, allow_pickle=options.allow_pickle)
    try:
        prompted = spec.gate_mode not in ("random", "uniform_random")
        # The base's tokenizer tokenizes the prompts; that same object is saved with the MoE (with the padding
        # state the prompts left in it, as mergekit-moe saves it).
        with _tokenizer_of(plan, plan.base, required=prompted) as tokenizer, \
                ThreadPoolExecutor(1, thread_name_prefix="hubmerge-routing") as pool:
            # The router rows are computed beside the streaming of everything else (routers are written last).
            stop = threading.Event()
            rows = pool.submit(router_rows, plan, tokenizer, device=options.device,
                               show_progress=options.show_progress, stop=stop)
            try:
                plan.method = bind_parts(rows)
                shards = layout_shards([ShardEntry(t.name, t.dtype, t.shape) for t in plan.tensors], max_shard)
                fingerprint = moe_fingerprint(plan, max_shard, options.device)
                # Copying and scaling tensors gains nothing from a GPU (--device serves the hidden states).
                run = replace(options, device="cpu", prefetch_bytes=options.prefetch_bytes or PREFETCH_BYTES)
                digest, files, progress, card = stream_to_folder(
                    plan, plan.items, shards, target, run, fingerprint,
                    finalize=lambda folder, digest: finalize_moe(plan, folder, shards, digest, tokenizer),
                    card_writer=card_writer, in_parts=True)
            finally:
                stop.set()  # a failed stream: the routing thread gives up at its next layer
    finally:
        for m in plan.models:
            m.close()
    logger.info("built a %d-expert %s model in %s (%s)", len(spec.experts), plan.family.display, target, digest)
    return MergeResult(target.resolve(), plan, digest, [s.filename for s in shards], files, dict(progress.digests),
                       fingerprint, card)


# -- router rows ------------------------------------------------------------------------------------------


def router_rows(plan: MoEPlan, tokenizer: Any = None, *, device: str = "cpu", show_progress: bool = True,
                stop: threading.Event | None = None) -> dict[str, torch.Tensor]:
    """{"router": [layers, experts, hidden], "shared router": [layers, 1, hidden] (Qwen2-MoE)}. ``tokenizer``:
    the base's, set up by ``routing_tokenizer`` (the prompted modes need it). ``stop``: give up when set."""
    spec = plan.spec
    groups = {"router": list(spec.experts)}
    if plan.family.shared_gated:
        groups["shared router"] = list(spec.shared_experts)
    if spec.gate_mode in ("random", "uniform_random"):
        draw = random_rows if spec.gate_mode == "random" else uniform_rows
        out = {}
        for group, members in groups.items():
            per_layer = []
            for name in plan.router_names(group):
                gen = torch.Generator().manual_seed(tensor_seed(spec.hubmerge.seed, name))
                per_layer.append(draw((len(members), plan.hidden_size), gen))
            out[group] = torch.stack(per_layer)
        return out

    base = plan.models[plan.base]
    batches: list[dict[str, torch.Tensor]] = []
    wanted: dict[str, list[tuple[int, int | None]]] = {}  # group -> per expert (positive, negative) batch index
    for group, members in groups.items():
        for e in members:
            pos = len(batches)
            batches.append(tokenize_prompts(tokenizer, e.positive_prompts))
            neg = None
            if e.negative_prompts:
                neg = len(batches)
                batches.append(tokenize_prompts(tokenizer, e.negative_prompts))
            wanted.setdefault(group, []).append((pos, neg))
    if spec.gate_mode == "cheap_embed":
        embedding = base.reader.read(base.tensors[input_embedding_name(base.tensors)])
        vectors = [cheap_embedding(embed_rows(embedding, b["input_ids"]), b["attention_mask"], plan.num_layers)
                   for b in batches]
    else:
        vectors = layer_inputs_per_batch(base, batches, prefix=plan.layer_prefix, num_layers=plan.num_layers,
                                         device=pick_device(device), average=spec.gate_mode == "hidden_avg",
                                         show_progress=show_progress, stop=stop)
    out = {}
    for group, pairs in wanted.items():
        per_expert = [gate_rows(vectors[p], vectors[n] if n is not None else None) for p, n in pairs]
        out[group] = torch.stack(per_expert).permute(1, 0, 2)  # [layers, experts, hidden]
    _warn_degenerate(out["router"])
    return out


def _warn_degenerate(rows: torch.Tensor) -> None:
    bad = degenerate_layers(rows)
    if bad:
        where = "every layer" if len(bad) == rows.shape[0] else "layer" + ("s " if len(bad) > 1 else " ") + \
            ", ".join(map(str, bad))
        logger.warning("the router rows of %s are nearly parallel: the prompts may be too similar, and some "
                       "experts will rarely be chosen", where)


@contextmanager
def _tokenizer_of(plan: MoEPlan, index: int, *, required: bool):
    """The model's tokenizer set up for routing as mergekit-moe does (None when it has none); its files live
    until the block ends (saving may copy them)."""
    source = plan.models[index]
    files = TokenizerFiles(source)
    try:
        if not files.present:
            if required:
                raise SourceError(f"base_model {source.name} has no tokenizer files, but gate_mode "
                                  f"'{plan.spec.gate_mode}' tokenizes the prompts with the base's tokenizer",
                                  hint="add the tokenizer to the base, or use gate_mode: random")
            yield None
        else:
            yield routing_tokenizer(files.load())
    finally:
        files.cleanup()


# -- the folder -----------------------------------------------------------------------------------------


def finalize_moe(plan: MoEPlan, folder: Path, shards, digest: str, base_tokenizer: Any = None) -> list[str]:
    """Everything beside the shards: index, config.json, tokenizer (the base's routing tokenizer as mergekit-moe
    saves it, or the ``tokenizer_source`` model's), generation config, the recipe as ``mergekit_moe_config.yml``."""
    files = write_shard_index(folder, shards, digest)
    (folder / "config.json").write_text(config_text(plan.config))
    files.append("config.json")
    with _tokenizer_of(plan, plan.tokenizer_source, required=False) as donor:
        tokenizer = base_tokenizer if plan.tokenizer_source == plan.base else donor
        if tokenizer is None:
            logger.warning("%s has no tokenizer; the MoE folder has none either",
                           plan.models[plan.tokenizer_source].name)
        else:
            files += save_tokenizer(tokenizer, folder, plan.chat_template)
    generation = plan.models[plan.base].read_file("generation_config.json")
    if generation is not None:
        (folder / "generation_config.json").write_bytes(generation)
        files.append("generation_config.json")
    (folder / RECIPE_FILE).write_text(dump_yaml(recipe_document(plan.spec)))
    files.append(RECIPE_FILE)
    return files


def moe_fingerprint(plan: MoEPlan, max_shard_size: int, device: str) -> str:
    """A partial folder is resumed only for the same inputs, tensors and parts, and the same router recipe
    (prompts, gate mode, seed, device class): the rows are a function of those."""
    parts = SimpleNamespace(method=plan.method, models=plan.models, tensors=plan.items)
    h = hashlib.sha256(plan_fingerprint(parts, max_shard_size).encode())
    h.update(f"\n{plan.family.id}\n{'cuda' if device.startswith('cuda') else 'cpu'}\n".encode())
    h.update(json.dumps(recipe_document(plan.spec), sort_keys=True, default=str).encode())
    h.update(f"\nseed {plan.spec.hubmerge.seed}\n".encode())
    for t in plan.tensors:
        h.update(f"{t.name}:{t.dtype}:{t.shape}:{len(t.parts)}\n".encode())
    return h.hexdigest()
