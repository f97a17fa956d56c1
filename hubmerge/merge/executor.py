"""The streaming executor: one output tensor at a time, reads prefetched in background threads, shard
writes in a background thread, the math on the chosen device in between.

Memory stays bounded by the prefetch budget (a few tensors per input) plus the tensor being written,
whatever the model size.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import torch
from tqdm.auto import tqdm

from hubmerge.errors import HubmergeError, MergeError
from hubmerge.merge.methods._chunks import spread_spans
from hubmerge.merge.methods.registry import ReleasableInputs
from hubmerge.merge.plan import MergePlan, PlannedInput, PlannedTensor
from hubmerge.sources.readers import POOL, row_block
from hubmerge.sources.safetensors_format import DTYPES

logger = logging.getLogger(__name__)

DEFAULT_PREFETCH_BYTES = 256 * 1024 * 1024
# A compute-bound method spends seconds on a large tensor that takes milliseconds to read: reading far ahead
# buys nothing there, and what is read ahead sits in memory through the method's own peak.
COMPUTE_BOUND_PREFETCH_BYTES = 32 * 1024 * 1024
# Otherwise the read-ahead follows the jobs: a few of the largest one's inputs in flight keep the reads ahead
# of the math, and more only sits in memory. A Hub read waits a round trip per request, so it keeps more.
READ_AHEAD_JOBS = 3
MIN_PREFETCH_BYTES = 32 * 1024 * 1024
MIN_REMOTE_PREFETCH_BYTES = 96 * 1024 * 1024
# Row-wise methods merge a tensor whose largest input exceeds this a block of rows at a time: a block's
# inputs and result are in memory, not the whole tensor's (a 150 MB embedding would otherwise hold 600 MB).
ROW_BLOCK_BYTES = 8 * 1024 * 1024
REMOTE_READ_THREADS = 16


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HubmergeError("--device cuda was asked for, but no CUDA device is available",
                            hint="use --device cpu or --device auto")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise HubmergeError(f"--device {name[:40]!r} is not a device", hint="use cpu, cuda, cuda:N or auto") from None


@dataclass
class _Loaded:
    base: torch.Tensor | None
    others: list[torch.Tensor]


def merge_tensor(plan: MergePlan, item: PlannedTensor, loaded: _Loaded, device: torch.device) -> torch.Tensor:
    """Run the method on one tensor's inputs: cast to the compute dtype, merge, cast to the output dtype."""
    compute = DTYPES[item.compute_dtype]

    def prepare(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=compute, non_blocking=True)

    base = prepare(loaded.base) if loaded.base is not None else None
    # The method gets the only references to the other inputs, so it may release them early (see registry).
    others = ReleasableInputs(prepare(t) for t in loaded.others)
    loaded.others.clear()
    if item.copy:  # a module left out of ``modules:``: the config source's tensor as it is
        return _finish(others[0] if base is None else base, item)
    kwargs = dict(item.kwargs)
    if plan.method.random:
        # A CPU generator whatever the device: the masks drawn from it are then the same on every device.
        gen = torch.Generator()
        gen.manual_seed(item.seed)
        kwargs["generator"] = gen
    try:
        with torch.no_grad():
            result = plan.method.func(base, others, **kwargs)
    except HubmergeError:
        raise
    except Exception as exc:  # a method failing on real data: name the tensor
        raise MergeError(f"{plan.method.name} failed on tensor '{item.name}': {exc}") from exc
    return _finish(result, item)


def _finish(result: torch.Tensor, item: PlannedTensor) -> torch.Tensor:
    out = result.to(dtype=DTYPES[item.dtype])
    if out.device.type != "cpu":
        out = out.cpu()
    if not out.is_contiguous():
        out = out.contiguous()
    return out


def aligned(item: PlannedTensor, loaded: _Loaded, *, recycle: bool = True) -> _Loaded:
    """Re-index vocabulary-axis inputs onto the output tokenizer (on the read thread, one tensor at a time).
    ``recycle``: the inputs are read buffers nothing else holds, so the pool may reuse them."""
    tensors = ([loaded.base] if loaded.base is not None else []) + loaded.others
    try:
        out = item.vocab.apply(tensors, DTYPES[item.compute_dtype])
    except Exception as exc:  # shapes were checked at plan time; name the tensor if the data disagrees
        raise MergeError(f"re-indexing the vocabulary of tensor '{item.name}' failed: {exc}") from exc
    for t in tensors if recycle else ():  # the aligned tensors are fresh; the read buffers can be reused
        POOL.give(t)
    return _Loaded(out[0], out[1:]) if loaded.base is not None else _Loaded(None, out)


def _recycle(loaded: _Loaded, result: torch.Tensor) -> None:
    """Hand input buffers back to the read pool, unless the result still uses one (e.g. passthrough)."""
    keep = result._base if result._base is not None else result
    for t in ([loaded.base] if loaded.base is not None else []) + loaded.others:
        base = t._base if t._base is not None else t
        if base.data_ptr() != keep.data_ptr() and t.device.type == "cpu":
            POOL.give(t)


class StreamingExecutor:
    """Reads ahead (bounded by bytes), merges in order, hands results to ``sink`` on a writer thread."""

    def __init__(self, plan: MergePlan, *, device: str = "cpu", prefetch_bytes: int | None = None,
                 read_threads: int | None = None, show_progress: bool = True, math_threads: int | None = None):
        self.plan = plan
        self.device = pick_device(device)
        self.remote = any(m.is_hub for m in plan.models)
        if prefetch_bytes is None and plan.method.compute_bound:
            prefetch_bytes = COMPUTE_BOUND_PREFETCH_BYTES
        self.prefetch_bytes = prefetch_bytes  # None: sized from the jobs once they are known (``read_ahead``)
        # Local reads are page faults and memory copies: a few threads keep the disk busy. A Hub read waits
        # a round trip and then a capped stream, so more reads are kept going (the byte budget still bounds
        # them, and the range fetcher decides how many requests actually go out at once).
        self.read_threads = read_threads or (REMOTE_READ_THREADS if self.remote else 4)
        self.show_progress = show_progress
        # Compute-bound methods (sampling, iterating) get torch's threads on every core: a DARE merge on 2
        # cores is 25% faster with both. The others are elementwise and share the cores with reading, writing
        # and hashing: torch splits each operation over its threads and waits for the slowest, so with a core
        # busy with I/O a second torch thread only adds spin time (~40% more CPU for a linear merge). They run
        # on one torch thread, and their chunk loops spread over every core instead, a span at a time
        # (``spread_spans``): a busy core simply takes fewer spans. So do the selection methods, whose
        # per-model work is such a span each (``parallel_models``).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
        torch_wide = plan.method.compute_bound and not plan.method.parallel_models
        self.math_threads = math_threads or (cores if torch_wide else 1)
        self.span_workers = 1 if torch_wide else cores

    def _read(self, item: PlannedTensor) -> _Loaded:
        models = self.plan.models
        base = models[item.base.model].reader.read(item.base.info) if item.base is not None else None
        loaded = _Loaded(base, [models[i.model].reader.read(i.info) for i in item.others])
        return aligned(item, loaded) if item.vocab is not None else loaded

    def row_blocks(self, item: PlannedTensor) -> list[PlannedTensor] | None:
        """``item`` as blocks of rows, when its method is row-wise, its inputs are large and every input's
        reader can read a block of rows; ``None`` to merge it whole."""
        if not self.plan.method.rowwise or item.vocab is not None or len(item.shape) < 1 or item.shape[0] < 2:
            return None
        largest = max((i.info.nbytes for i in item.inputs), default=0)
        if largest <= ROW_BLOCK_BYTES or any(i.info.shape[:1] != item.shape[:1] for i in item.inputs):
            return None
        if not all(getattr(self.plan.models[i.model].reader, "row_blocks", False) for i in item.inputs):
            return None
        n = item.shape[0]
        step = max(1, ROW_BLOCK_BYTES * n // largest)

        def block(p: PlannedInput | None, first: int, stop: int) -> PlannedInput | None:
            return None if p is None else PlannedInput(p.model, row_block(p.info, first, stop))

        return [replace(item, shape=(min(n, a + step) - a,) + tuple(item.shape[1:]),
                        base=block(item.base, a, min(n, a + step)),
                        others=tuple(block(o, a, min(n, a + step)) for o in item.others))
                for a in range(0, n, step)]

    def read_ahead(self, jobs: list[tuple[PlannedTensor, bool]]) -> int:
        """Bytes of inputs read ahead of the math: the explicit budget, or a few of the largest job's."""
        if self.prefetch_bytes is not None:
            return self.prefetch_bytes
        largest = max(sum(i.info.nbytes for i in job.inputs) for job, _ in jobs)
        floor = MIN_REMOTE_PREFETCH_BYTES if self.remote else MIN_PREFETCH_BYTES
        return min(DEFAULT_PREFETCH_BYTES, max(floor, READ_AHEAD_JOBS * largest))

    def run(self, items: list[PlannedTensor], sink: Callable[[str, torch.Tensor], None],
            part_sink: Callable[[str, torch.Tensor], None] | None = None) -> None:
        """Merge ``items`` in order, handing each result to ``sink(name, tensor)`` on the writer thread. With
        ``part_sink``, a row-wise method's large tensors are merged and handed over a block of rows at a time
        (``part_sink(name, rows)``, in order)."""
        if not items:
            return
        jobs: list[tuple[PlannedTensor, bool]] = []
        for item in items:
            blocks = self.row_blocks(item) if part_sink is not None else None
            jobs += [(b, True) for b in blocks] if blocks else [(item, False)]
        for index, model in enumerate(self.plan.models):
            expect = getattr(model.reader, "expect", None)
            if expect is not None:  # lets remote readers coalesce neighbouring tensors into one request
                expect([i.info for job, part in jobs if not part for i in job.inputs if i.model == index])
        budget = self.read_ahead(jobs)
        bar = tqdm(total=sum(i.nbytes for i in items), unit="B", unit_scale=True, desc="Merging",
                   disable=not self.show_progress)
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.math_threads)
        out_q: queue.Queue = queue.Queue(maxsize=1)
        writer_error: list[BaseException] = []
        stop = threading.Event()

        def writer() -> None:
            while True:
                job = out_q.get()
                if job is None:
                    return
                name, tensor, part = job
                if writer_error:
                    continue  # drain so the producer never blocks
                try:
                    (part_sink if part else sink)(name, tensor)
                    bar.update(tensor.numel() * tensor.element_size())
                except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                    writer_error.append(exc)
                    stop.set()

        wthread = threading.Thread(target=writer, name="hubmerge-writer", daemon=True)
        wthread.start()
        pending: deque[tuple[PlannedTensor, bool, Future]] = deque()
        inflight = 0
        next_index = 0
        try:
            with ThreadPoolExecutor(self.read_threads, thread_name_prefix="hubmerge-read") as pool:
                while next_index < len(jobs) or pending:
                    # Keep reads in flight up to the byte budget (always at least the next job).
                    while next_index < len(jobs):
                        job, part = jobs[next_index]
                        size = sum(i.info.nbytes for i in job.inputs)
                        if pending and inflight + size > budget:
                            break
                        pending.append((job, part, pool.submit(self._read, job)))
                        inflight += size
                        next_index += 1
                    item, part, future = pending.popleft()
                    loaded = future.result()
                    inflight -= sum(i.info.nbytes for i in item.inputs)
                    with spread_spans(self.span_workers):
                        result = merge_tensor(self.plan, item, loaded, self.device)
                    _recycle(loaded, result)
                    del loaded
                    if stop.is_set():
                        break
                    out_q.put((item.name, result, part))
                    del result
                if stop.is_set():
                    for _, _, f in pending:
                        f.cancel()
        finally:
            out_q.put(None)
            wthread.join()
            bar.close()
            torch.set_num_threads(saved_threads)
        if writer_error:
            raise writer_error[0]
