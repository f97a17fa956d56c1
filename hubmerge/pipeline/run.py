"""A whole merge, end to end: open the inputs, plan, stream, finalise the folder atomically."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from hubmerge.merge.moe.plan import plan_moe
from hubmerge.merge.plan import MergePlan, build_plan
from hubmerge.merge.plan_config import output_config
from hubmerge.merge.tokenizer import write_tokenizer_files
from hubmerge.output.shards import DEFAULT_MAX_SHARD_SIZE, ShardEntry, layout_shards
from hubmerge.pipeline import moe
from hubmerge.pipeline.output_folder import (  # noqa: F401 (MergeOptions, MergeResult, recipe_document: imported from here)
    MergeOptions,
    MergeResult,
    plan_fingerprint,
    recipe_document,
    stream_to_folder,
    write_shard_index,
)
from hubmerge.sources.model import ModelSource
from hubmerge.sources.open import open_model
from hubmerge.spec.model import MergeSpec, ModelRef
from hubmerge.spec.moe import is_moe_spec
from hubmerge.spec.yamlio import dump_yaml

logger = logging.getLogger(__name__)


def open_sources(spec: MergeSpec, *, base_dir: Path | None = None, hub: Any = None,
                 allow_pickle: bool = False) -> dict[ModelRef, ModelSource]:
    sources: dict[ModelRef, ModelSource] = {}
    try:
        for ref in spec.referenced_models():
            sources[ref] = open_model(ref, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
    except BaseException:
        for s in sources.values():
            s.close()
        raise
    return sources


def plan_spec(spec: MergeSpec, *, base_dir: Path | None = None, hub: Any = None,
              allow_pickle: bool = False) -> MergePlan:
    if is_moe_spec(spec):  # planned from headers like a merge (hubmerge validate, card)
        return plan_moe(spec, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
    sources = open_sources(spec, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
    donor = None
    try:
        if spec.tokenizer_donor() is not None:  # a tokenizer source that is no input: only its tokenizer is read
            donor = open_model(spec.tokenizer_donor(), base_dir=base_dir, hub=hub, files_only=True)
        return build_plan(spec, sources, tokenizer_donor=donor)
    except BaseException:
        for s in sources.values():
            s.close()
        raise
    finally:
        if donor is not None:
            donor.close()


def shard_layout(plan: MergePlan, max_shard_size: int):
    return layout_shards([ShardEntry(t.name, t.dtype, t.shape) for t in plan.tensors], max_shard_size)


def run_merge(spec: MergeSpec, out_dir: str | Path, options: MergeOptions | None = None, *, hub: Any = None,
              card_writer: Callable[[MergePlan, str, Path], str | None] | None = None) -> MergeResult:
    options = options or MergeOptions()
    if is_moe_spec(spec):  # a mixture-of-experts recipe (hubmerge moe)
        return moe.run_moe(spec, out_dir, options, hub=hub, card_writer=card_writer)
    target = Path(out_dir)
    max_shard = options.max_shard_size or spec.hubmerge.max_shard_size or DEFAULT_MAX_SHARD_SIZE
    plan = plan_spec(spec, base_dir=options.base_dir, hub=hub, allow_pickle=options.allow_pickle)
    try:
        shards = shard_layout(plan, max_shard)
        fingerprint = plan_fingerprint(plan, max_shard)
        digest, files, progress, card = stream_to_folder(
            plan, plan.tensors, shards, target, options, fingerprint,
            finalize=lambda folder, digest: finalize_folder(plan, folder, shards, digest), card_writer=card_writer)
    finally:
        for m in plan.models:
            m.close()
    logger.info("merged %d tensors into %s (%s)", len(plan.tensors), target, digest)
    return MergeResult(target.resolve(), plan, digest, [s.filename for s in shards], files,
                       dict(progress.digests), fingerprint, card)


def finalize_folder(plan: MergePlan, folder: Path, shards, digest: str) -> list[str]:
    """Everything beside the shards: index, config, tokenizer and generation files, the recipe."""
    files = write_shard_index(folder, shards, digest)
    config = output_config(plan)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    files.append("config.json")
    files += write_tokenizer_files(plan, folder)  # built (union, overrides, chat template) or copied
    files += copy_tagalong_files(plan, folder, skip=set(files))
    (folder / "mergekit_config.yml").write_text(dump_yaml(recipe_document(plan.spec)))
    files.append("mergekit_config.yml")
    return files


def copy_tagalong_files(plan: MergePlan, folder: Path, *, skip: set[str]) -> list[str]:
    """Processor files (``preprocessor_config.json``, ...) from the config source, as mergekit copies them."""
    donor = plan.models[plan.config_source]
    written = []
    for name in plan.tagalong:
        data = donor.read_file(name) if name not in skip else None
        if data is not None:
            (folder / name).write_bytes(data)
            written.append(name)
    return written
