"""Chunked loops over elementwise work, shared by the method kernels."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch


def chunk_length(n: int, size: int, device: torch.device) -> int:
    """``size`` elements per step on the CPU (temporaries stay in cache); all ``n`` at once elsewhere (a GPU wants
    one large kernel, not many small ones)."""
    return size if device.type == "cpu" else max(n, 1)


def spans(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive steps of ``size`` covering ``range(n)``, the last one possibly shorter."""
    return ((start, min(start + size, n)) for start in range(0, n, size))


# How many threads ``run_spans`` may use: 1 unless the caller (the executor) spreads the work, see
# ``spread_spans``. Thread state rather than an argument so that the pure kernels keep their signatures; per
# thread so that a merge running in one thread (a webhook job, a test's background server) never changes how
# another thread's kernels split their work.
_local = threading.local()


def span_workers() -> int:
    """The ``spread_spans`` setting of the calling thread (1 outside any block)."""
    return getattr(_local, "workers", 1)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


@contextmanager
def spread_spans(workers: int) -> Iterator[None]:
    """Within the block, ``run_spans`` on the CPU hands spans to ``workers`` threads (this one included).

    The caller keeps torch's own threads at one meanwhile: torch splits every operation across its threads
    and waits for the slowest, so a core busy with reading or writing stalls each operation; threads that
    take whole spans as they go never wait for one another, a busy core just takes fewer spans."""
    saved = span_workers()
    _local.workers = max(1, workers)
    try:
        yield
    finally:
        _local.workers = saved


def _helpers(count: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < count:
            _pool = ThreadPoolExecutor(count, thread_name_prefix="hubmerge-math")
        return _pool


def run_spans(n: int, size: int, device: torch.device, body: Callable[[int, int, Any], None],
              scratch: Callable[[], Any] = lambda: None) -> None:
    """Call ``body(start, stop, buffers)`` for the spans of ``chunk_length(n, size, device)`` covering
    ``range(n)``. The spans must be independent (each writes only its own part of the output). ``buffers`` is
    what ``scratch()`` made for the calling thread (once per thread), reused from span to span."""
    todo = list(spans(n, chunk_length(n, size, device)))
    workers = min(span_workers(), len(todo)) if device.type == "cpu" else 1
    if workers <= 1:
        buffers = scratch() if todo else None
        for start, stop in todo:
            body(start, stop, buffers)
        return
    queue = iter(todo)
    lock = threading.Lock()
    failed = threading.Event()

    def work() -> None:
        buffers = scratch()
        while not failed.is_set():
            with lock:
                span = next(queue, None)
            if span is None:
                return
            try:
                body(span[0], span[1], buffers)
            except BaseException:
                failed.set()  # the others stop at their next span
                raise

    helpers = [_helpers(workers - 1).submit(work) for _ in range(workers - 1)]
    try:
        work()
    finally:
        errors = [f.exception() for f in helpers]  # waits: no helper may outlive the call
    for error in errors:
        if error is not None:
            raise error
