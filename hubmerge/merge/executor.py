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
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from hubmerge.errors import HubmergeError, MergeError
from hubmerge.merge.methods._chunks import spread_spans
from hubmerge.merge.methods.registry import ReleasableInputs
from hubmerge.merge.plan import MergePlan, PlannedTensor
from hubmerge.sources.readers import POOL
from hubmerge.sources.safetensors_format import DTYPES

logger = logging.getLogger(__name__)

DEFAULT_PREFETCH_BYTES = 256 * 1024 * 1024
# A compute-bound method spends seconds on a large tensor that takes milliseconds to read: reading far ahead
# buys nothing there, and what is read ahead sits in memory through the method's own peak.
COMPUTE_BOUND_PREFETCH_BYTES = 32 * 1024 * 1024
REMOTE_READ_THREADS = 16


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HubmergeError("--device cuda was asked for, but no CUDA device is available",
                            hint="use --device cpu or --device auto")
    return torch.device(name)


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
        if prefetch_bytes is None:
            prefetch_bytes = COMPUTE_BOUND_PREFETCH_BYTES if plan.method.compute_bound else DEFAULT_PREFETCH_BYTES
        self.prefetch_bytes = prefetch_bytes
        # Local reads are page faults and memory copies: a few threads keep the disk busy. A Hub read waits
        # a round trip and then a capped stream, so more reads are kept going (the byte budget still bounds
        # them, and the range fetcher decides how many requests actually go out at once).
        self.read_threads = read_threads or (REMOTE_READ_THREADS if any(m.is_hub for m in plan.models) else 4)
        self.show_progress = show_progress
        # Compute-bound methods (selection, sampling) get torch's threads on every core: a DARE merge on 2
        # cores is 25% faster with both. The others are elementwise and share the cores with reading, writing
        # and hashing: torch splits each operation over its threads and waits for the slowest, so with a core
        # busy with I/O a second torch thread only adds spin time (~40% more CPU for a linear merge). They run
        # on one torch thread, and their chunk loops spread over every core instead, a span at a time
        # (``spread_spans``): a busy core simply takes fewer spans.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
        self.math_threads = math_threads or (cores if plan.method.compute_bound else 1)
        self.span_workers = 1 if plan.method.compute_bound else cores

    def _read(self, item: PlannedTensor) -> _Loaded:
        models = self.plan.models
        base = models[item.base.model].reader.read(item.base.info) if item.base is not None else None
        loaded = _Loaded(base, [models[i.model].reader.read(i.info) for i in item.others])
        return aligned(item, loaded) if item.vocab is not None else loaded

    def run(self, items: list[PlannedTensor], sink: Callable[[str, torch.Tensor], None]) -> None:
        if not items:
            return
        for index, model in enumerate(self.plan.models):
            expect = getattr(model.reader, "expect", None)
            if expect is not None:  # lets remote readers coalesce neighbouring tensors into one request
                expect([i.info for item in items for i in item.inputs if i.model == index])
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
                name, tensor = job
                if writer_error:
                    continue  # drain so the producer never blocks
                try:
                    sink(name, tensor)
                    bar.update(tensor.numel() * tensor.element_size())
                except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                    writer_error.append(exc)
                    stop.set()

        wthread = threading.Thread(target=writer, name="hubmerge-writer", daemon=True)
        wthread.start()
        pending: deque[tuple[PlannedTensor, Future]] = deque()
        inflight = 0
        next_index = 0
        try:
            with ThreadPoolExecutor(self.read_threads, thread_name_prefix="hubmerge-read") as pool:
                while next_index < len(items) or pending:
                    # Keep reads in flight up to the byte budget (always at least the next tensor).
                    while next_index < len(items):
                        size = sum(i.info.nbytes for i in items[next_index].inputs)
                        if pending and inflight + size > self.prefetch_bytes:
                            break
                        pending.append((items[next_index], pool.submit(self._read, items[next_index])))
                        inflight += size
                        next_index += 1
                    item, future = pending.popleft()
                    loaded = future.result()
                    inflight -= sum(i.info.nbytes for i in item.inputs)
                    with spread_spans(self.span_workers):
                        result = merge_tensor(self.plan, item, loaded, self.device)
                    _recycle(loaded, result)
                    del loaded
                    if stop.is_set():
                        break
                    out_q.put((item.name, result))
                    del result
                if stop.is_set():
                    for _, f in pending:
                        f.cancel()
        finally:
            out_q.put(None)
            wthread.join()
            bar.close()
            torch.set_num_threads(saved_threads)
        if writer_error:
            raise writer_error[0]
