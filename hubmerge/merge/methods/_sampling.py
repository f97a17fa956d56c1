"""Bernoulli keep-masks for DARE and DELLA: fast, reproducible, independent of threads and devices.

mergekit calls ``torch.bernoulli(p)`` on the global RNG: about 20 ns per element on one CPU core, the
slowest step of a DARE merge. Here element ``i`` is kept when

    u_i < p_i,    u_i = floor(r_i / 2^8) / 2^24,    r_i a uniform 32-bit integer,

so ``P(keep) = ceil(p_i * 2^24) / 2^24``: exactly ``p`` when ``p * 2^24`` is an integer (any bf16/fp16 value
from 2^-16 up), within 6e-8 otherwise. The integers come from numpy's SFC64 (Chris Doty-Humphrey's "Small
Fast Chaotic" generator; a 64-bit counter in its 256-bit state guarantees a period of at least 2^64), about
1 ns per element, in fixed chunks of ``_CHUNK`` elements. Chunk ``c`` is its own stream, seeded by
``SeedSequence([w0, w1, c])`` where ``w0, w1`` are two integers drawn from the caller's ``torch.Generator``:
the mask depends only on that generator's state, never on thread count or device
(the draw runs on the CPU and the mask is moved to the tensor's device). Pure function, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hubmerge.merge.methods._chunks import spans

__all__ = ["keep_mask"]

_CHUNK = 1 << 22  # elements per stream: big enough that seeding (~30 µs) is noise, small enough to stay in cache
_FRACTION_BITS = 24  # u has the resolution of a float32 in [0.5, 1)


def _seed_words(generator: torch.Generator | None) -> list[int]:
    """Two integers from the caller's generator (advancing it, so consecutive masks differ)."""
    device = generator.device if generator is not None else "cpu"
    return torch.randint(0, 2**62, (2,), generator=generator, device=device).tolist()


def _chunk_bits(words: list[int], chunk: int, count: int) -> np.ndarray:
    """``count`` uniform uint32 values of stream ``chunk``."""
    raw = np.random.SFC64(np.random.SeedSequence([*words, chunk])).random_raw((count + 1) // 2)
    return raw.view(np.uint32)[:count]


def keep_mask(probability: float | torch.Tensor, shape: torch.Size | tuple[int, ...],
              generator: torch.Generator | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean mask of ``shape`` on ``device``: True with probability ``probability`` (a number, or a tensor
    of ``shape`` holding one probability per element)."""
    n = math.prod(shape)
    words = _seed_words(generator)
    mask = np.empty(n, dtype=np.bool_)
    if isinstance(probability, torch.Tensor):
        p = probability.detach().to("cpu", torch.float32).reshape(-1).numpy()

        def keep(bits: np.ndarray, start: int, stop: int) -> None:
            u = (bits >> np.uint32(32 - _FRACTION_BITS)).astype(np.float32)
            u *= np.float32(2.0**-_FRACTION_BITS)  # exact: a 24-bit integer times a power of two
            np.less(u, p[start:stop], out=mask[start:stop])
    else:
        # u < p  <=>  floor(r / 2^8) < ceil(p * 2^24)  <=>  r < ceil(p * 2^24) * 2^8: one integer compare
        steps = math.ceil(min(max(float(probability), 0.0), 1.0) * 2**_FRACTION_BITS)
        threshold = steps << (32 - _FRACTION_BITS)
        if threshold >= 2**32:  # p >= 1: every entry is kept, nothing to draw
            return torch.ones(tuple(shape), dtype=torch.bool, device=device)

        def keep(bits: np.ndarray, start: int, stop: int) -> None:
            np.less(bits, np.uint32(threshold), out=mask[start:stop])

    for c, (start, stop) in enumerate(spans(n, _CHUNK)):
        keep(_chunk_bits(words, c, stop - start), start, stop)
    return torch.from_numpy(mask).view(tuple(shape)).to(device)
