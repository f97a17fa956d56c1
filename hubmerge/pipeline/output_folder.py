"""Writing a job's output folder, whatever the job: the options, the result, streaming planned items through
the executor into shards of a partial folder (resuming what a matching earlier run finished), the shard
index, and the recipe file. ``run`` (merges) and ``moe`` (mixtures of experts) both write through here."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hubmerge import __version__
from hubmerge.merge.executor import StreamingExecutor
from hubmerge.merge.plan import MergePlan, PlannedTensor
from hubmerge.output.folder import commit_partial, discard_partial, prepare_partial
from hubmerge.output.shards import INDEX_NAME, Progress, ShardWriter, content_hash, index_document, shard_digests
from hubmerge.spec.model import MergeSpec

logger = logging.getLogger(__name__)


@dataclass
class MergeOptions:
    device: str = "cpu"
    max_shard_size: int | None = None
    resume: bool = False
    overwrite: bool = False
    base_dir: Path | None = None  # relative model paths are looked up here first
    show_progress: bool = True
    prefetch_bytes: int | None = None
    on_shard: Callable[[Path], None] | None = None  # called with each finished shard (push uploads it)
    # Write only these shards (one part of a merge split across machines); no config, card or index.
    only_shards: set[str] | None = None
    allow_pickle: bool = False  # read pytorch_model*.bin inputs (through torch.load(weights_only=True))
    protected: tuple[Path, ...] = ()  # the output may not be, hold or lie inside these (the spec file, inputs)


@dataclass
class MergeResult:
    output: Path
    plan: MergePlan
    content_hash: str
    shards: list[str]
    files: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # tensor name -> hex digest (see output.shards)
    fingerprint: str = ""
    card: str | None = None  # the README the card writer wrote (and returned)


def input_roots(models) -> list[Path]:
    """The local folders the inputs are read from (an output must stay apart from them)."""
    return [m.extra["local_root"] for m in models if m.extra.get("local_root") is not None]


def plan_fingerprint(plan: MergePlan, max_shard_size: int) -> str:
    """Identifies a plan's output exactly: a partial folder is resumable only for the same fingerprint."""
    h = hashlib.sha256()
    h.update(f"hubmerge {__version__}\n{plan.method.name}\n{max_shard_size}\n".encode())
    for m in plan.models:
        h.update(f"{m.name}@{m.revision}\n".encode())
        if m.extra.get("adapter") is not None:  # model+adapter: the adapter is part of the input
            h.update(f"{m.extra['adapter'].identity}\n".encode())
        if m.extra.get("moe") is not None:  # MoE experts assembled from pieces: where each piece is
            h.update(f"moe:{m.extra['moe']}\n".encode())
        for name in sorted(m.tensors):
            i = m.tensors[name]
            h.update(f"{name}:{i.file}:{i.dtype}:{i.shape}:{i.start}:{i.end}\n".encode())
    for t in plan.tensors:
        h.update(json.dumps([t.name, t.shape, t.dtype, t.compute_dtype,
                             [(i.model, i.info.name) for i in t.inputs],
                             t.base is not None, t.kwargs, t.seed] + ([t.vocab.digest] if t.vocab else []),
                            default=str).encode())
    return h.hexdigest()


def stream_to_folder(plan, items: list[PlannedTensor], shards, target: Path, options: MergeOptions, fingerprint: str,
                     *, finalize: Callable[[Path, str], list[str]], card_writer=None,
                     in_parts: bool = False) -> tuple[str, list[str], Progress, str | None]:
    """Stream ``items`` through the executor into ``shards`` in a partial folder beside ``target``, resuming
    what a matching earlier run finished; ``finalize(folder, digest)`` writes everything beside the shards.
    The folder is renamed into place only when complete. ``in_parts``: several items make up one output
    tensor, in order (an MoE's fused experts). ``card_writer(plan, digest, folder)`` writes the README and
    returns its text. Returns the content hash, the files written, the progress and the card's text."""
    partial = prepare_partial(target, resume=options.resume, overwrite=options.overwrite,
                              protected=(*options.protected, *input_roots(plan.models)))
    try:
        progress = _resumed_progress(partial, fingerprint, shards) if options.resume else None
        progress = progress or Progress(partial, fingerprint)
        writer = ShardWriter(partial, shards, progress, on_shard_done=options.on_shard)
        selected = [s for s in shards if options.only_shards is None or s.filename in options.only_shards]
        wanted = {e.name for s in selected for e in s.entries}
        done = {e.name for s in selected if writer.shard_done(s) for e in s.entries}
        todo = [t for t in items if t.name in wanted and t.name not in done]
        if done:
            logger.info("resuming: %d of %d tensors already written", len(done), len(plan.tensors))
        executor = StreamingExecutor(plan, device=options.device, show_progress=options.show_progress,
                                     **({"prefetch_bytes": options.prefetch_bytes} if options.prefetch_bytes else {}))
        try:
            executor.run(todo, writer.write_part if in_parts else writer.write, writer.write_part)
        finally:
            writer.abort()
        digest = content_hash({k: bytes.fromhex(v) for k, v in progress.digests.items()})
        card = None
        if options.only_shards is None:
            files = finalize(partial, digest)
            if card_writer is not None:
                card = card_writer(plan, digest, partial)
                files.append("README.md")
        else:
            files = [s.filename for s in selected]
        (partial / ".hubmerge-progress.json").unlink(missing_ok=True)
        commit_partial(partial, target)
    except BaseException:
        discard_partial(partial, keep_if_resumable=True)
        raise
    return digest, files, progress, card


def _resumed_progress(partial: Path, fingerprint: str, shards) -> Progress | None:
    progress = Progress.load(partial, fingerprint)
    if progress is None:
        logger.info("partial output does not match this plan; starting over")
        for p in partial.iterdir():
            p.unlink() if p.is_file() else None
        return None
    for shard in shards:
        if not progress.shards.get(shard.filename):
            continue
        path = partial / shard.filename
        found = shard_digests(path, shard)
        if found is None or any(progress.digests.get(name) != digest for name, digest in found.items()):
            logger.warning("%s is missing or changed; it will be written again", shard.filename)
            del progress.shards[shard.filename]
            for e in shard.entries:
                progress.digests.pop(e.name, None)
            path.unlink(missing_ok=True)
    return progress


def write_shard_index(folder: Path, shards, digest: str) -> list[str]:
    """The shard files' names, plus the index beside them when there are several."""
    files = [s.filename for s in shards]
    if len(shards) > 1:
        doc = index_document(shards, {"hubmerge_version": __version__, "content_hash": digest})
        (folder / INDEX_NAME).write_text(json.dumps(doc, indent=2) + "\n")
        files.append(INDEX_NAME)
    return files


def recipe_document(spec: MergeSpec) -> dict[str, Any]:
    """The spec as written, minus our ``hubmerge:`` block: a mergekit-compatible recipe."""
    return {k: v for k, v in spec.raw.items() if k != "hubmerge"}
