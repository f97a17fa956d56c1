"""``hubmerge tokensurgeon``: a model with another model's tokenizer, streamed tensor by tensor.

Plan from tokenizers and headers (``transplant_plan``), then write every tensor of the model in file
order: most are copied through unchanged (read ahead on a thread), the vocabulary tensors are rebuilt
onto the donor's token ids (shared tokens' rows copied bit for bit, the others from
``merge.token_approx``). Output shapes are known up front, so the shards are written header-first by the
usual shard writer. config.json gets the new vocabulary size and the donor's special token ids; the
tokenizer files are the donor's. Memory: the vocabulary matrices of one tensor (model's, donor's, new)
plus the OMP workspace, whatever the model size.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from hubmerge.errors import MergeError
from hubmerge.merge.executor import pick_device
from hubmerge.merge.token_approx import new_rows, omp_rows
from hubmerge.merge.tokenizer.files import TOKENIZER_FILES
from hubmerge.merge.tokenizer.planning import set_vocab_size
from hubmerge.merge.vocab_match import VocabMatch
from hubmerge.output.folder import commit_partial, discard_partial, prepare_partial
from hubmerge.output.shards import (
    DEFAULT_MAX_SHARD_SIZE,
    INDEX_NAME,
    Progress,
    ShardEntry,
    ShardWriter,
    content_hash,
    index_document,
    layout_shards,
)
from hubmerge.pipeline.output_folder import input_roots
from hubmerge.pipeline.streaming import prefetched
from hubmerge.pipeline.tool_run import ToolRun, open_two
from hubmerge.pipeline.transplant_plan import TransplantPlan, VocabTensor, plan_transplant
from hubmerge.spec.tools import TokensurgeonSpec

logger = logging.getLogger(__name__)

TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "mask_token_id",
                 "sep_token_id", "cls_token_id", "decoder_start_token_id")


@dataclass
class TransplantStats:
    rows: int
    copied: int
    approximated: int
    zero: int
    shared: int
    method: str
    examples: list[str] = field(default_factory=list)  # a few approximated tokens, for the card

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "copied": self.copied, "approximated": self.approximated, "zero": self.zero,
                "method": self.method}


@dataclass
class TransplantResult:
    output: Path
    plan: TransplantPlan
    stats: TransplantStats
    content_hash: str
    files: list[str]
    digests: dict[str, str]
    seconds: float = 0.0
    card: str | None = None  # the README the card writer wrote (and returned)


def open_transplant(spec: TokensurgeonSpec, *, base_dir: Path | None = None, hub: Any = None,
                    allow_pickle: bool = False) -> TransplantPlan:
    return open_two(spec.model, spec.donor, lambda model, donor: plan_transplant(spec, model, donor),
                    base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)


def transplant_stats(plan: TransplantPlan) -> TransplantStats:
    m = plan.match
    inverse = {i: t for t, i in plan.donor_tokenizer.get_vocab().items()}
    examples = [inverse.get(i, str(i)) for i in m.approximate[:8]]
    return TransplantStats(m.rows, len(m.copy), len(m.approximate), m.zero_rows, len(m.shared), plan.spec.method,
                           examples)


def rebuild_matrix(plan: TransplantPlan, vt: VocabTensor, matrix: torch.Tensor, donor_matrix: torch.Tensor | None,
                   device: torch.device) -> torch.Tensor:
    """The tensor ``vt`` (vocabulary first) rebuilt onto the donor's token ids."""
    m: VocabMatch = plan.match
    view = matrix.movedim(vt.axis, 0)
    out = torch.zeros((m.rows, *view.shape[1:]), dtype=view.dtype)
    if m.copy:
        ids = torch.tensor([c[0] for c in m.copy], dtype=torch.long)
        rows = torch.tensor([c[1] for c in m.copy], dtype=torch.long)
        out[ids] = view[rows]  # shared tokens: the model's own rows, bit for bit
    if m.approximate and vt.kind != "aux":
        out[torch.tensor(m.approximate, dtype=torch.long)] = approximate(plan, vt, view, donor_matrix, device).cpu()
    return out.movedim(0, vt.axis).contiguous()


def approximate(plan: TransplantPlan, vt: VocabTensor, view: torch.Tensor, donor_matrix: torch.Tensor | None,
                device: torch.device) -> torch.Tensor:
    spec, m = plan.spec, plan.match
    embed = view.to(device)

    def by_omp() -> torch.Tensor:
        assert donor_matrix is not None
        donor = donor_matrix.to(device)
        donor_ids = torch.tensor([s[0] for s in m.shared], dtype=torch.long, device=device)
        model_ids = torch.tensor([s[1] for s in m.shared], dtype=torch.long, device=device)
        targets = donor[torch.tensor(m.approximate, dtype=torch.long, device=device)]
        return omp_rows(targets, donor[donor_ids], embed[model_ids], plan.k, out_dtype=embed.dtype)

    pieces = subword_pieces(plan) if spec.method == "subword" else None
    try:
        return new_rows(spec.method, embed, len(m.approximate), omp_inputs=by_omp, pieces=pieces,
                        subword_method=spec.subword_method, is_lm_head=vt.kind == "head")
    except Exception as exc:  # name the tensor if the numerics fail on real data
        raise MergeError(f"approximating new rows of '{vt.name}' with {spec.method} failed: {exc}") from exc


def subword_pieces(plan: TransplantPlan) -> list[list[int]]:
    """For each new token: the model's token ids its text splits into (ids past the embedding dropped)."""
    inverse = {i: t for t, i in plan.donor_tokenizer.get_vocab().items()}
    rows = plan.model.tensors[next(n for n, v in plan.vocab_tensors.items() if v.kind == "embed")].shape[0]
    out = []
    for out_id in plan.match.approximate:
        text = plan.donor_tokenizer.convert_tokens_to_string([inverse[out_id]])
        ids = plan.model_tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        out.append([i for i in ids if 0 <= i < rows])
    return out


def output_config(plan: TransplantPlan) -> dict[str, Any]:
    """The model's config.json with the donor's vocabulary size and special token ids."""
    config = json.loads(json.dumps(plan.model.config))
    set_vocab_size(config, plan.match.rows)
    for key in TOKEN_ID_KEYS:
        if key in plan.donor.config:
            config[key] = plan.donor.config[key]
        elif key in config:
            role = key[: -len("_id")]
            value = getattr(plan.donor_tokenizer, key, None) if role != "decoder_start_token" else None
            if value is None:
                config.pop(key)
            else:
                config[key] = value
    return config


def generation_config(plan: TransplantPlan, config: dict[str, Any]) -> bytes | None:
    raw = plan.model.read_file("generation_config.json")
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    for key in TOKEN_ID_KEYS:
        if key in doc:
            if config.get(key) is None:
                doc.pop(key)
            else:
                doc[key] = config[key]
    return (json.dumps(doc, indent=2) + "\n").encode()


def run_transplant(spec: TokensurgeonSpec, out_dir: str | Path, options: ToolRun | None = None, *,
                   hub: Any = None, card_writer: Callable[[TransplantResult, Path], str] | None = None
                   ) -> TransplantResult:
    options = options or ToolRun()
    start = time.perf_counter()
    device = pick_device(options.device)
    target_dir = Path(out_dir)
    plan = open_transplant(spec, base_dir=options.base_dir, hub=hub, allow_pickle=options.allow_pickle)
    for note in plan.notes:
        logger.warning("%s", note)
    try:
        stats = transplant_stats(plan)
        logger.info("%d of the donor's %d tokens copied, %d approximated (%s), %d rows zero", stats.copied,
                    stats.rows, stats.approximated, spec.method, stats.zero)
        entries = [ShardEntry(n, plan.model.tensors[n].dtype, plan.out_shape(n)) for n in plan.order]
        shards = layout_shards(entries, options.max_shard_size or spec.hubmerge.max_shard_size
                               or DEFAULT_MAX_SHARD_SIZE)
        partial = prepare_partial(target_dir, resume=False, overwrite=options.overwrite,
                                  protected=(*options.protected, *input_roots([plan.model, plan.donor])))
        try:
            progress = Progress(partial, "tokensurgeon")
            writer = ShardWriter(partial, shards, progress, on_shard_done=options.on_shard)
            try:
                _stream(plan, writer, device, options.show_progress)
            finally:
                writer.abort()
            digest = content_hash({k: bytes.fromhex(v) for k, v in progress.digests.items()})
            files = _write_side_files(plan, partial, shards, digest)
            (partial / ".hubmerge-progress.json").unlink(missing_ok=True)
            result = TransplantResult(target_dir.resolve(), plan, stats, digest, files, dict(progress.digests),
                                      time.perf_counter() - start)
            if card_writer is not None:
                result.card = card_writer(result, partial)
                files.append("README.md")
            commit_partial(partial, target_dir)
        except BaseException:
            discard_partial(partial, keep_if_resumable=False)
            raise
    finally:
        plan.close()
    return result


def _stream(plan: TransplantPlan, writer: ShardWriter, device: torch.device, show_progress: bool) -> None:
    def read(name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        tensor = plan.model.reader.read(plan.model.tensors[name])
        vt = plan.vocab_tensors.get(name)
        donor = plan.donor.reader.read(vt.donor) if vt is not None and vt.donor is not None else None
        return tensor, donor

    def size(name: str) -> int:
        vt = plan.vocab_tensors.get(name)
        return plan.model.tensors[name].nbytes + (vt.donor.nbytes if vt is not None and vt.donor else 0)

    expect = getattr(plan.model.reader, "expect", None)
    if expect is not None:
        expect([plan.model.tensors[n] for n in plan.order])
    donor_infos = [v.donor for v in plan.vocab_tensors.values() if v.donor is not None]
    expect = getattr(plan.donor.reader, "expect", None)
    if expect is not None and donor_infos:
        expect(sorted(set(donor_infos), key=lambda i: (i.file, i.start)))
    bar = tqdm(total=sum(size(n) for n in plan.order), unit="B", unit_scale=True, desc="Transplanting",
               disable=not show_progress)
    try:
        for name, (tensor, donor) in prefetched(plan.order, read, size):
            vt = plan.vocab_tensors.get(name)
            if vt is not None:
                with torch.no_grad():
                    tensor = rebuild_matrix(plan, vt, tensor, donor, device)
            writer.write(name, tensor)
            bar.update(size(name))
            del tensor, donor
    finally:
        bar.close()


def _write_side_files(plan: TransplantPlan, folder: Path, shards, digest: str) -> list[str]:
    files = [s.filename for s in shards]
    if len(shards) > 1:
        doc = index_document(shards, {"content_hash": digest})
        (folder / INDEX_NAME).write_text(json.dumps(doc, indent=2) + "\n")
        files.append(INDEX_NAME)
    config = output_config(plan)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    files.append("config.json")
    generation = generation_config(plan, config)
    if generation is not None:
        (folder / "generation_config.json").write_bytes(generation)
        files.append("generation_config.json")
    for name in TOKENIZER_FILES:  # the donor's tokenizer, as it is
        if name == "generation_config.json":
            continue
        data = plan.donor.read_file(name)
        if data is not None:
            (folder / name).write_bytes(data)
            files.append(name)
    return files

