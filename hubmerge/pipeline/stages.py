"""Running a multi-stage spec: each stage's output feeds the stages that name it.

Intermediate outputs go to a hidden scratch folder beside the final output and are deleted as soon as
the last stage that uses them has run, so at most the live intermediates are on disk. With ``resume``,
finished intermediates are kept after a failure and reused by the next run (the final stage resumes as
any merge does).
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from hubmerge.pipeline.run import MergeOptions, MergeResult, run_merge
from hubmerge.spec.model import MergeSpec, ModelRef
from hubmerge.spec.parse import spec_from_dict
from hubmerge.spec.pin import map_model_refs
from hubmerge.spec.stages import Stage

logger = logging.getLogger(__name__)


def scratch_folder(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.hubmerge-stages"


def with_stage_outputs(stage: Stage, made: dict[str, Path]) -> MergeSpec:
    """The stage's spec with every reference to an earlier stage replaced by that stage's output folder."""
    if not stage.needs:
        return stage.spec

    def to_folder(ref: ModelRef) -> ModelRef:
        name = stage.stage_of(ref)
        return ModelRef(str(made[name]), None, ref.lora) if name is not None else ref

    return spec_from_dict(map_model_refs(stage.spec.raw, to_folder), source=f"stage {stage.name}")


def run_stages(stages: list[Stage], out_dir: str | Path, options: MergeOptions | None = None, *, hub: Any = None,
               card_writer: Callable | None = None) -> MergeResult:
    """Run every stage in order; the last one writes ``out_dir`` (with the card), the others scratch folders."""
    options = options or MergeOptions()
    out_dir = Path(out_dir)
    scratch = scratch_folder(out_dir)
    final = stages[-1]
    finished = {s.name for s in stages[:-1] if options.resume and (scratch / s.name).is_dir()}
    # Walking back from the final stage: what must run, and which finished intermediates it reads.
    wanted = {final.name}
    for stage in reversed(stages):
        if stage.name in wanted and stage.name not in finished:
            wanted.update(stage.needs)
    to_run = [s for s in stages if s.name in wanted and s.name not in finished]
    uses_left = Counter(dep for s in to_run for dep in s.needs)
    made = {name: scratch / name for name in finished & wanted}
    for name in made:
        logger.info("reusing the finished intermediate %s", made[name])
    ok = False
    try:
        for number, stage in enumerate(to_run, 1):
            if len(stages) > 1:
                logger.info("stage %d/%d: %s", number, len(to_run), stage.name)
            spec = with_stage_outputs(stage, made)
            if stage is final:
                result = run_merge(spec, out_dir, options, hub=hub, card_writer=card_writer)
            else:
                made[stage.name] = scratch / stage.name
                run_merge(spec, made[stage.name], replace(options, overwrite=True, on_shard=None, only_shards=None),
                          hub=hub)
            for dep in stage.needs:
                uses_left[dep] -= 1
                if uses_left[dep] == 0 and stage is not final:  # the final's inputs go once it has succeeded
                    shutil.rmtree(made.pop(dep), ignore_errors=True)
        ok = True
        return result
    finally:
        if ok or not options.resume:
            shutil.rmtree(scratch, ignore_errors=True)
