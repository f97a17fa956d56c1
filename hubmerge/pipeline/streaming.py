"""Reading ahead for jobs that walk a model tensor by tensor (LoRA extraction, tokenizer transplant).

The next tensors are read on background threads while the current one is worked on, with the bytes in
flight bounded (always at least the next item), so the resident set is a few tensors whatever the model
size. Results come back in order.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, Sequence, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")

DEFAULT_BUDGET = 64 * 1024 * 1024


def prefetched(items: Sequence[Item], read: Callable[[Item], Loaded], size: Callable[[Item], int], *,
               budget: int = DEFAULT_BUDGET, threads: int = 2) -> Iterator[tuple[Item, Loaded]]:
    """``(item, read(item))`` for every item, in order, reading ahead within ``budget`` bytes."""
    pending: deque[tuple[Item, Future, int]] = deque()
    inflight = 0
    index = 0
    with ThreadPoolExecutor(threads, thread_name_prefix="hubmerge-read") as pool:
        try:
            while index < len(items) or pending:
                while index < len(items):
                    nbytes = size(items[index])
                    if pending and inflight + nbytes > budget:
                        break
                    pending.append((items[index], pool.submit(read, items[index]), nbytes))
                    inflight += nbytes
                    index += 1
                item, future, nbytes = pending.popleft()
                loaded = future.result()
                inflight -= nbytes
                yield item, loaded
                del loaded
        finally:
            for _, future, _ in pending:
                future.cancel()
