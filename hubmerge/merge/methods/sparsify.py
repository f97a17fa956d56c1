"""Sparsifiers for task vectors (``delta = model - base``), numerically identical to mergekit 0.1.5.

Each function takes a delta that the caller owns, sparsifies it **in place** and returns it. mergekit's own
functions return new tensors; doing it in place saves a full-size copy per model and performs the same
floating-point operations, so the results are bitwise equal.

- :func:`magnitude` (TIES): keep the ``k = max(1, floor(density * n))`` largest ``|delta|``.
- :func:`magnitude_outliers` (Model Breadcrumbs): drop the ``gamma`` fraction of largest ``|delta|`` and the
  smallest ones, keeping ``floor(density * n)`` entries.
- :func:`bernoulli` (DARE): keep each entry with probability ``density``.
- :func:`della_magprune` (DELLA): keep each entry with a probability that grows with its magnitude rank.

``rescale=True`` multiplies the kept entries by ``||delta||_1 / ||kept||_1`` (skipped when either is below
1e-7). That is mergekit's rule; note that it matches the L1 norm, it does not divide by ``density`` as the DARE
paper does.

Random masks come from :func:`keep_mask` (``_sampling``): a Bernoulli draw per element, ~15x faster than the
``torch.bernoulli`` mergekit calls on its global RNG, reproducible from the generator's state alone. The masks
therefore differ from mergekit's draws (as any per-tensor seeding must); everything around them (the
probabilities, masking, rescaling) is mergekit's arithmetic, computed with its CPU rules on every device
(magnitudes in float32; DARE/DELLA work in bf16 for bf16 tensors and in float32 otherwise).
"""

from __future__ import annotations

import torch

from hubmerge.merge.methods._chunks import spans
from hubmerge.merge.methods._introsort import sorted_range_mask
from hubmerge.merge.methods._sampling import keep_mask

__all__ = ["bernoulli", "della_magprune", "magnitude", "magnitude_outliers", "apply_mask"]

_RESCALE_EPS = 1e-7


def apply_mask(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """``delta *= mask`` in place, then optionally restore the L1 norm (mergekit's ``rescaled_masked_tensor``)."""
    before = delta.abs().sum() if rescale else None
    _mul_in_chunks(delta, mask)
    if before is not None:
        after = delta.abs().sum()
        if not (before < _RESCALE_EPS or after < _RESCALE_EPS):
            delta.mul_(before / after)
    return delta


_CHUNK = 1 << 20


def _mul_in_chunks(values: torch.Tensor, mask: torch.Tensor) -> None:
    """``values *= mask`` (same shape). A mask of another dtype is converted by the multiply; doing it a chunk at a
    time keeps that converted copy small instead of full-size. Elementwise, so the results are identical."""
    if values.device.type != "cpu" or not values.is_contiguous() or not mask.is_contiguous():
        values.mul_(mask)
        return
    flat_values, flat_mask = values.view(-1), mask.view(-1)
    for start, stop in spans(flat_values.numel(), _CHUNK):
        flat_values[start:stop].mul_(flat_mask[start:stop])


def magnitude(delta: torch.Tensor, density: float, *, rescale: bool = False) -> torch.Tensor:
    """TIES trim: keep the ``max(1, int(density * n))`` entries of largest magnitude.

    Selects exactly the elements of mergekit's ``torch.argsort(|delta|.float(), descending=True)[:k]`` (CPU),
    ties included, without the full sort (see ``_introsort``). ``density >= 1``: unchanged, not rescaled;
    ``density <= 0``: zeros.
    """
    if density >= 1:
        return delta
    n = delta.numel()
    if density <= 0 or n == 0:
        return delta.zero_()
    k = max(1, int(density * n))
    keep = sorted_range_mask(delta, 0, k, descending=True)
    return apply_mask(delta, keep.view(delta.shape), rescale)


def magnitude_outliers(
    delta: torch.Tensor, density: float, gamma: float = 0.01, *, rescale: bool = False
) -> torch.Tensor:
    """Model Breadcrumbs: keep sorted positions ``[n_bot, n_bot + target)`` of ``|delta|`` in ascending order.

    ``target = int(density * n)``, ``n_top = int(gamma * n)``, ``n_bot = max(0, n - target - n_top)``: the
    ``gamma`` largest outliers go first, then the smallest entries, and fewer outliers are dropped when
    ``gamma > 1 - density``. The window is read with Python slice rules as mergekit does (so odd inputs such
    as negative densities behave the same). Only ``density >= 1`` short-circuits; ``density = 0`` multiplies
    by an all-zero mask (signed zeros, as mergekit).
    """
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    start, stop, _ = slice(n_bot, n_bot + target).indices(n)
    keep = sorted_range_mask(delta, start, max(start, stop), descending=False)
    return apply_mask(delta, keep.view(delta.shape), rescale)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # mergekit (CPU): torch.bernoulli has no CPU float16 kernel, so everything but bf16 is masked in float32.
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def bernoulli(
    delta: torch.Tensor,
    density: float,
    *,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE drop: ``mask ~ Bernoulli(density)`` per entry (no draw at all when ``density >= 1``)."""
    if density >= 1:
        return delta
    work = _work_dtype(delta.dtype)
    mask = keep_mask(density, delta.shape, generator, delta.device)
    if work == delta.dtype:
        return apply_mask(delta, mask, rescale)
    return delta.copy_(apply_mask(delta.to(work), mask, rescale))


_INF_BITS = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}


def _sort_keys(rows: torch.Tensor) -> torch.Tensor:
    """What mergekit argsorts: ``|rows|``. For bf16/fp16 the int16 bit patterns of the magnitudes compare exactly
    like the values (no NaN), so the same introsort makes the same moves, ~30% faster than comparing halves."""
    magnitudes = rows.abs()
    if rows.dtype in _INF_BITS:
        bits = magnitudes.view(torch.int16)
        if not bits.numel() or int(bits.max()) <= _INF_BITS[rows.dtype]:
            return bits
    return magnitudes


def della_magprune(
    delta: torch.Tensor,
    density: float,
    epsilon: float,
    *,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DELLA MagPrune: per row (dim 1; a 1-D tensor is one row), keep entry i with probability

    ``p_i = (density - epsilon) + 2 * epsilon * (rank_i - min rank) / (max rank - min rank)``

    where ``rank_i`` is the ascending magnitude rank within the row (1-based, as mergekit computes it in the work
    dtype, so bf16 rounds large ranks). The order comes from the same ``torch.argsort`` call as mergekit's (on
    int16 bit patterns for bf16/fp16, which sorts identically). Every row is a permutation of the same ranks, so
    the probability of each rank is computed once, with mergekit's operations, and scattered to the elements:
    this replaces mergekit's second argsort and its eight full-size elementwise passes, with identical values.
    (The argsort runs on the tensor's device, so on CUDA equal magnitudes may be ranked in another order.)
    Raises ValueError unless ``0 < density - epsilon`` and ``density + epsilon < 1`` (checked only when
    ``0 < density < 1``, like mergekit).
    """
    if density >= 1:
        return delta
    if density <= 0:
        return delta.zero_()
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError(
            f"della: epsilon ({epsilon}) must keep density ± epsilon inside (0, 1); density is {density}"
        )
    work = _work_dtype(delta.dtype)
    rows = delta if delta.dim() >= 2 else delta.unsqueeze(0)
    order = torch.argsort(_sort_keys(rows), dim=1)
    ranks = torch.arange(rows.shape[1], device=delta.device).to(work) + 1
    rank_norm = ((ranks - ranks.min()) / (ranks.max() - ranks.min())).clamp(0, 1)
    by_rank = (density - epsilon) + rank_norm * 2 * epsilon
    by_rank = by_rank.view(1, -1, *([1] * (rows.dim() - 2))).expand(order.shape)
    probs = torch.empty(rows.shape, dtype=work, device=delta.device).scatter_(1, order, by_rank)
    del order, by_rank
    mask = keep_mask(probs, probs.shape, generator, delta.device)
    del probs
    if work == delta.dtype:
        apply_mask(rows, mask, rescale)  # rows is a view of delta
        return delta
    return delta.copy_(apply_mask(rows.to(work), mask, rescale).view(delta.shape))
