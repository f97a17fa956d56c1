"""Chunked loops over elementwise work, shared by the method kernels."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def chunk_length(n: int, size: int, device: torch.device) -> int:
    """``size`` elements per step on the CPU (temporaries stay in cache); all ``n`` at once elsewhere (a GPU wants
    one large kernel, not many small ones)."""
    return size if device.type == "cpu" else max(n, 1)


def spans(n: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive steps of ``size`` covering ``range(n)``, the last one possibly shorter."""
    return ((start, min(start + size, n)) for start in range(0, n, size))
