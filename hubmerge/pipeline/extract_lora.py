"""``hubmerge extract-lora``: a PEFT LoRA adapter from a fine-tune and its base, streamed tensor by tensor.

Open both models (local, HF cache or Hub range reads, pinned to SHAs), plan from the headers
(``lora_plan``), then for each tensor: read the pair (read ahead on a thread), ``delta = W_ft - W_base``
in float32 on the device, truncated SVD (``merge.lowrank``), the factors appended to the output as they
come (``output.spill``). At the end: ``adapter_model.safetensors``, ``adapter_config.json`` and the card,
and the folder moved into place in one step. Memory: the tensors in flight and one SVD's workspace.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from hubmerge.errors import HubmergeError, MergeError
from hubmerge.merge.executor import pick_device
from hubmerge.merge.lowrank import low_rank_factors, relative_change
from hubmerge.output.folder import commit_partial, discard_partial, prepare_partial
from hubmerge.output.shards import Progress, content_hash
from hubmerge.output.spill import TensorSpill
from hubmerge.pipeline.lora_plan import PEFT_PREFIX, ExtractionPlan, Target, plan_extraction
from hubmerge.pipeline.output_folder import input_roots
from hubmerge.pipeline.streaming import prefetched
from hubmerge.pipeline.tool_run import ToolRun, open_two
from hubmerge.spec.tools import ExtractLoraSpec

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# ||W_ft - W_base|| / ||W_base|| above this: the base is unlikely to be the fine-tune's ancestor (fine-tunes
# are typically below 0.1; two independently initialised models give about sqrt(2)).
ANCESTOR_RATIO = 0.5


@dataclass
class ModuleStats:
    module: str
    rank: int
    max_rank: int
    delta_norm: float
    residual_norm: float
    top_discarded: float

    @property
    def relative_error(self) -> float:
        return self.residual_norm / self.delta_norm if self.delta_norm else 0.0


@dataclass
class ExtractionReport:
    """What the extraction kept and lost, for the card, the CLI and the tests."""

    lora: list[ModuleStats] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)  # tensors saved in full
    unchanged: list[str] = field(default_factory=list)  # tensors equal in both models, left out
    dropped_bias: list[str] = field(default_factory=list)  # changed biases of LoRA modules, left out
    delta_sq: float = 0.0
    base_sq: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def change_ratio(self) -> float:
        return relative_change(math.sqrt(self.delta_sq), math.sqrt(self.base_sq))

    @property
    def relative_error(self) -> float:
        """sqrt(sum of discarded s^2 / sum of all s^2) over every LoRA module."""
        total = sum(s.delta_norm ** 2 for s in self.lora)
        return math.sqrt(sum(s.residual_norm ** 2 for s in self.lora) / total) if total else 0.0

    def to_json(self) -> dict[str, Any]:
        worst = max(self.lora, key=lambda s: s.relative_error, default=None)
        return {"lora_modules": len(self.lora), "saved_in_full": len(self.saved), "unchanged": len(self.unchanged),
                "max_rank": max((s.rank for s in self.lora), default=0),
                "relative_error": round(self.relative_error, 6),
                "worst_module": {"module": worst.module, "rank": worst.rank,
                                 "relative_error": round(worst.relative_error, 6)} if worst else None,
                "change_ratio": round(self.change_ratio, 6)}


def open_extraction(spec: ExtractLoraSpec, *, base_dir: Path | None = None, hub: Any = None,
                    allow_pickle: bool = False) -> ExtractionPlan:
    return open_two(spec.model, spec.base_model, lambda model, base: plan_extraction(spec, model, base),
                    base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)


def _lora_names(target: Target) -> tuple[str, str]:
    if target.embedding:
        return (f"{PEFT_PREFIX}{target.module}.lora_embedding_A", f"{PEFT_PREFIX}{target.module}.lora_embedding_B")
    return f"{PEFT_PREFIX}{target.module}.lora_A.weight", f"{PEFT_PREFIX}{target.module}.lora_B.weight"


@dataclass
class _Outcome:
    """What one tensor gives (computed on a worker thread, recorded in order on the main one)."""

    kind: str  # "lora" | "full" | "unchanged" | "bias_changed" | "bias_same"
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    tensor: torch.Tensor | None = None
    stats: ModuleStats | None = None
    base_norm: float = 0.0


class _Extractor:
    def __init__(self, plan: ExtractionPlan, spill: TensorSpill, device: torch.device):
        self.plan = plan
        self.spill = spill
        self.device = device
        self.report = ExtractionReport(notes=list(plan.notes))
        self.out_dtype = DTYPES_BY_NAME.get(plan.spec.dtype) if plan.spec.dtype else None
        self.warned_ancestor = False

    def read(self, target: Target) -> tuple[torch.Tensor, torch.Tensor | None]:
        ft = self.plan.model.reader.read(target.ft)
        base = self.plan.base.reader.read(target.base) if target.base is not None else None
        return ft, base

    def compute(self, target: Target, ft: torch.Tensor, base: torch.Tensor | None) -> _Outcome:
        """The math for one tensor; thread-safe (touches nothing shared)."""
        with torch.no_grad():
            if target.kind == "lora":
                return self._lora(target, ft, base)
        same = base is not None and base.shape == ft.shape and torch.equal(ft, base)
        if target.kind == "full":
            if same and not target.always:
                return _Outcome("unchanged")
            return _Outcome("full", tensor=ft if self.out_dtype is None else ft.to(self.out_dtype))
        return _Outcome("bias_same" if same or base is None else "bias_changed")

    def _lora(self, target: Target, ft: torch.Tensor, base: torch.Tensor) -> _Outcome:
        w_ft = ft.to(self.device, torch.float32)
        w_base = base.to(self.device, torch.float32)
        delta = w_ft - w_base
        if not bool(delta.any()):
            return _Outcome("unchanged")
        base_norm = float(w_base.norm())
        del w_ft, w_base
        if target.transpose:
            delta = delta.T
        try:
            factors = low_rank_factors(delta, target.max_rank, sv_epsilon=self.plan.spec.sv_epsilon,
                                       distribute_scale=self.plan.spec.distribute_scale)
        except Exception as exc:  # LAPACK failing to converge on pathological data: name the tensor
            raise MergeError(f"SVD of the delta of '{target.tensor}' failed: {exc}") from exc
        del delta
        stats = ModuleStats(target.module, factors.rank, target.max_rank, factors.delta_norm,
                            factors.residual_norm, factors.top_discarded)
        if factors.rank == 0:  # sv_epsilon above every singular value: the module is left out
            return _Outcome("unchanged", stats=stats, base_norm=base_norm)
        dtype = self.out_dtype or ft.dtype
        return _Outcome("lora", factors.a.to(dtype).cpu(), factors.b.to(dtype).cpu(), stats=stats,
                        base_norm=base_norm)

    def record(self, target: Target, outcome: _Outcome) -> None:
        """Write one tensor's outcome (in plan order) and account for it."""
        report = self.report
        if outcome.stats is not None:
            report.delta_sq += outcome.stats.delta_norm ** 2
            report.base_sq += outcome.base_norm ** 2
            ratio = relative_change(outcome.stats.delta_norm, outcome.base_norm)
            if ratio > ANCESTOR_RATIO and not self.warned_ancestor:
                self.warned_ancestor = True
                report.notes.append(self.ancestor_warning(target.tensor, ratio))
                logger.warning("%s", report.notes[-1])
        if outcome.kind == "lora":
            name_a, name_b = _lora_names(target)
            self.spill.add(name_a, outcome.a)
            self.spill.add(name_b, outcome.b)
            report.lora.append(outcome.stats)
        elif outcome.kind == "full":
            self.spill.add(PEFT_PREFIX + target.tensor, outcome.tensor)
            report.saved.append(target.tensor)
            head = self.plan.head_module
            if self.plan.tied_embeddings and head and target.tensor == self.plan.embed_tensor:
                # The output head shares this embedding in the model: PEFT (ensure_weight_tying) wants it too.
                self.spill.add(f"{PEFT_PREFIX}{head}.weight", outcome.tensor)
                report.saved.append(f"{head}.weight")
        elif outcome.kind == "unchanged":
            report.unchanged.append(target.tensor)
        elif outcome.kind == "bias_changed":
            report.dropped_bias.append(target.tensor)

    def ancestor_warning(self, tensor: str, ratio: float) -> str:
        return (f"{self.plan.base.name} does not look like the base of {self.plan.model.name}: "
                f"‖W_ft - W_base‖ / ‖W_base‖ = {ratio:.2f} on '{tensor}' (fine-tunes are usually below 0.1), "
                "so the adapter will be large and lossy")


DTYPES_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                  "float64": torch.float64}


@dataclass
class ExtractResult:
    output: Path
    plan: ExtractionPlan
    report: ExtractionReport
    content_hash: str
    files: list[str]
    digests: dict[str, str]
    seconds: float = 0.0
    dtype: str | None = None  # safetensors dtype code of the LoRA factors
    card: str | None = None  # the README the card writer wrote (and returned)


def adapter_config(plan: ExtractionPlan, report: ExtractionReport, base_ref: tuple[str, str | None]) -> dict[str, Any]:
    """PEFT's adapter_config.json. ``r`` is the largest rank kept, ``lora_alpha = r`` (scaling 1); modules
    that kept another rank get it (and alpha = rank) in rank_pattern / alpha_pattern, by full name."""
    ranks = {s.module: s.rank for s in report.lora}
    top = max(ranks.values(), default=0)
    other = {m: r for m, r in ranks.items() if r != top}
    saved = sorted({t.rsplit(".", 1)[0] for t in report.saved})
    config: dict[str, Any] = {
        "peft_type": "LORA", "task_type": plan.task_type, "base_model_name_or_path": base_ref[0],
        "revision": base_ref[1], "r": top, "lora_alpha": top, "rank_pattern": other, "alpha_pattern": dict(other),
        "target_modules": _names(ranks, plan, "lora"), "modules_to_save": _names(saved, plan, "full") or None,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": plan.fan_in_fan_out, "use_rslora": False,
        "use_dora": False, "init_lora_weights": True, "inference_mode": True,
    }
    if plan.tied_embeddings and plan.head_module in saved:
        config["ensure_weight_tying"] = True  # the output head shares the saved embedding, as in the model
    return config


def _names(modules, plan: ExtractionPlan, kind: str) -> list[str]:
    """Short names (``q_proj``) where every module of that name is in the set, full names otherwise, so
    PEFT wraps exactly the modules the adapter holds tensors for."""
    chosen = set(modules)
    candidates: dict[str, set[str]] = {}
    for t in plan.targets:
        candidates.setdefault(t.module.rsplit(".", 1)[-1], set()).add(t.module)
    out: set[str] = set()
    for module in chosen:
        short = module.rsplit(".", 1)[-1]
        out.add(short if candidates.get(short, set()) <= chosen else module)
    return sorted(out)


def run_extraction(spec: ExtractLoraSpec, out_dir: str | Path, options: ToolRun | None = None, *,
                   hub: Any = None, card_writer: Callable[[ExtractResult, Path], str] | None = None
                   ) -> ExtractResult:
    options = options or ToolRun()
    start = time.perf_counter()
    target_dir = Path(out_dir)
    device = pick_device(options.device)
    plan = open_extraction(spec, base_dir=options.base_dir, hub=hub, allow_pickle=options.allow_pickle)
    for note in plan.notes:
        logger.warning("%s", note)
    try:
        partial = prepare_partial(target_dir, resume=False, overwrite=options.overwrite,
                                  protected=(*options.protected, *input_roots([plan.model, plan.base])))
        spill = TensorSpill(partial)
        try:
            extractor = _Extractor(plan, spill, device)
            _stream(plan, extractor, options.show_progress)
            report = extractor.report
            if report.dropped_bias:
                report.notes.append(f"{len(report.dropped_bias)} bias(es) of LoRA modules changed (e.g. "
                                    f"'{report.dropped_bias[0]}') and are left out: a PEFT LoRA cannot carry "
                                    "them; list the module in save_modules to keep it exactly")
                logger.warning("%s", report.notes[-1])
            if not report.lora and not report.saved:
                raise HubmergeError(f"{plan.model.name} and {plan.base.name} have the same weights in every "
                                    "tensor extracted: there is nothing to put in an adapter",
                                    hint="check that --model is the fine-tune and --base its base")
            if report.change_ratio > ANCESTOR_RATIO and not extractor.warned_ancestor:
                report.notes.append(extractor.ancestor_warning("all LoRA modules", report.change_ratio))
                logger.warning("%s", report.notes[-1])
            progress = Progress(partial, "extract-lora")
            spill.write_safetensors(ADAPTER_FILE, progress)
            if options.on_shard is not None:
                options.on_shard(partial / ADAPTER_FILE)
            digest = content_hash({k: bytes.fromhex(v) for k, v in progress.digests.items()})
            base_ref = (plan.base.name, plan.base.revision if plan.base.is_hub else None)
            config = adapter_config(plan, report, base_ref)
            (partial / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            files = [ADAPTER_FILE, ADAPTER_CONFIG]
            (partial / ".hubmerge-progress.json").unlink(missing_ok=True)
            dtypes = [e.dtype for e in spill.entries if ".lora_" in e.name]
            result = ExtractResult(target_dir.resolve(), plan, report, digest, files, dict(progress.digests),
                                   time.perf_counter() - start, dtypes[0] if dtypes else None)
            if card_writer is not None:
                result.card = card_writer(result, partial)
                files.append("README.md")
            commit_partial(partial, target_dir)
        except BaseException:
            spill.discard()
            discard_partial(partial, keep_if_resumable=False)
            raise
    finally:
        plan.close()
    logger.info("extracted %d LoRA modules (max rank %d) and %d full tensors into %s, relative error %.4g",
                len(report.lora), max((s.rank for s in report.lora), default=0), len(report.saved), target_dir,
                report.relative_error)
    return result


def _stream(plan: ExtractionPlan, extractor: _Extractor, show_progress: bool) -> None:
    """Reads ahead on threads; the SVDs run on one worker per core (each LAPACK call on one thread: a
    2-thread SVD of a small matrix spends most of its time synchronising), results recorded in order."""
    targets = plan.targets
    for source in plan.sources:
        expect = getattr(source.reader, "expect", None)
        if expect is not None:  # remote readers coalesce neighbouring tensors into one request
            infos = [t.ft if source is plan.model else t.base for t in targets]
            expect([i for i in infos if i is not None])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    workers = cores if extractor.device.type == "cpu" else 1
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1 if workers > 1 else cores)
    bar = tqdm(total=sum(t.nbytes for t in targets), unit="B", unit_scale=True, desc="Extracting",
               disable=not show_progress)
    window: deque[tuple[Target, Future]] = deque()

    def finish_oldest() -> None:
        target, future = window.popleft()
        extractor.record(target, future.result())
        bar.update(target.nbytes)

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="hubmerge-svd") as pool:
            try:
                for target, (ft, base) in prefetched(targets, extractor.read, lambda t: t.nbytes):
                    window.append((target, pool.submit(extractor.compute, target, ft, base)))
                    del ft, base
                    while len(window) >= workers:
                        finish_oldest()
                while window:
                    finish_oldest()
            finally:
                for _, future in window:
                    future.cancel()
    finally:
        bar.close()
        torch.set_num_threads(saved_threads)
