"""Generalized task arithmetic: task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties,
della, della_linear (mergekit's ``GeneralizedTaskArithmeticMerge``).

For base ``b`` and models ``x_i`` with weights ``w_i``::

    d_i = sparsify(x_i - b)            # per method, see ``sparsify``; L1-rescaled if ``rescale``
    d_i = w_i * d_i                    # weights are applied before the sign election
    with sign election (TIES "sum"):
        s   = +1 where sum_i d_i >= 0 else -1
        m_i = sign(d_i) == s           # exact zeros never agree
        D   = sum_i m_i d_i ;  W = sum_i m_i w_i ;  W[W == 0] = 1
    without:
        D   = sum_i d_i    ;  W = sum_i w_i    ;  W[|W| < 1e-8] = 1
    if normalize: D = D / W
    out = b + lambda * D

Bit-compatible with mergekit 0.1.5: everything runs in the input dtype (bf16 stays bf16), the weights are cast
to that dtype, and the reductions are the same tensor reductions over a stacked ``[models, ...]`` buffer.
``int8_mask`` is accepted for compatibility; it only changed the dtype of mergekit's sign mask (ours is always
boolean, which is as small), never the result.

Random methods (dare_*, della*) take ``generator``: a ``torch.Generator`` on the tensor's device that the
executor seeds per output tensor; the masks are drawn from it by ``_sampling.keep_mask``. mergekit draws
``torch.bernoulli`` from the global RNG in execution order instead, so the masks differ; given the same masks,
the outputs are bitwise equal (the kernel tests substitute our draws into mergekit's to check that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from hubmerge.merge.methods import sparsify as sp
from hubmerge.merge.methods._chunks import chunk_length, run_spans
from hubmerge.merge.methods.registry import REQUIRED, MergeMethod, Param, register, release

Sparsifier = Callable[[torch.Tensor, int], torch.Tensor]  # (delta, model index) -> delta, in place


# Side by side, each model's selection holds its own scratch (keys, index lists: ~6 bytes an element); above
# this size (an embedding) the models are sparsified one after the other, so the peak stays one model's.
_PARALLEL_ELEMENTS = 1 << 24

_SEQUENTIAL_ROWS = 8  # up to this many models the accumulation order below is verified against torch.sum


def sum_over_models(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(dim=0)``, bit for bit, faster for a few bf16/fp16 models on the CPU.

    For those, torch adds the rows in order into a float32 accumulator that starts at zero and rounds once at
    the end; its reduction kernel does it at ~3 ns per element, plain in-place adds at ~1 ns. (``0 + row 0``
    turns -0 into +0, as the zero start does; only the payload of a NaN result may differ.) Anything else goes
    to torch.sum."""
    if x.dtype not in (torch.bfloat16, torch.float16) or x.device.type != "cpu" or not 0 < len(x) <= _SEQUENTIAL_ROWS:
        return x.sum(dim=0)
    total = x[0].float()
    total += 0.0
    for row in x[1:]:
        total += row
    return total.to(x.dtype)


def sign_consensus(deltas: torch.Tensor) -> torch.Tensor:
    """TIES sign election over dim 0 (mergekit's "sum" method).

    The elected sign is +1 where ``sum_i d_i >= 0`` and -1 otherwise (also where the sum is NaN). Returns a mask
    in the deltas' dtype: 1 where ``d_i`` has the elected sign, else 0 (zeros and NaNs never agree). Multiplying
    by it gives the same values as mergekit's boolean mask.
    """
    elected = (sum_over_models(deltas) >= 0).to(deltas.dtype) * 2 - 1
    return deltas.sign().eq_(elected)


def _per_model(values: Sequence[float] | None, count: int, default: float, name: str) -> list[float]:
    if values is None:
        return [default] * count
    values = list(values)
    if len(values) != count:
        raise ValueError(f"{name}: expected {count} values (one per non-base model), got {len(values)}")
    return values


def generalized_task_arithmetic(
    base: torch.Tensor,
    others: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    sparsify: Sparsifier | None,
    consensus: bool,
    normalize: bool,
    lam: float,
    independent: bool = False,
) -> torch.Tensor:
    """The shared kernel; ``sparsify(delta, i)`` sparsifies model i's delta in place (or is None).

    ``independent``: ``sparsify`` draws nothing and model i's result depends on its delta only, so the models
    may be sparsified side by side (see ``run_spans``); random sparsifiers draw from one generator in model
    order and run one after the other."""
    if not others:
        return base
    if weights is None:
        raise ValueError("weight: required for every non-base model")
    weights = _per_model(weights, len(others), 0.0, "weight")
    count, n = len(others), base.numel()
    w = torch.tensor(weights, dtype=base.dtype, device=base.device).view(-1, 1)
    flat_base = base.reshape(-1)
    step = chunk_length(n, _CHUNK, base.device)
    if sparsify is None:
        # Elementwise from end to end: each chunk's deltas are made in a small reused buffer, never whole.
        flat_others = [other.reshape(-1) for other in others]

        def buffer() -> torch.Tensor:
            return base.new_empty((count, min(step, n)))

        def chunk_deltas(start: int, stop: int, scratch: torch.Tensor) -> torch.Tensor:
            chunk = scratch[:, : stop - start]
            for i, other in enumerate(flat_others):
                torch.sub(other[start:stop], flat_base[start:stop], out=chunk[i])
            return chunk.mul_(w)
    else:
        # Sparsifiers need each model's whole delta (top-k, norms, row ranks).
        deltas = base.new_empty((count, *base.shape))

        def trim(first: int, stop: int, _: None) -> None:
            for i in range(first, stop):
                torch.sub(others[i], base, out=deltas[i])
                release(others, i)  # the input is not needed again: free it before the costly sparsifying
                sparsify(deltas[i], i)

        if independent and n <= _PARALLEL_ELEMENTS:  # one model per span: the span workers (if any) sparsify
            run_spans(count, 1, base.device, trim)       # the models side by side
        else:  # one generator drawn in model order
            trim(0, count, None)
        flat = deltas.view(count, -1).mul_(w)

        def buffer() -> None:
            return None

        def chunk_deltas(start: int, stop: int, scratch: None) -> torch.Tensor:
            return flat[:, start:stop]

    return _combine(chunk_deltas, buffer, w, flat_base, consensus=consensus, normalize=normalize,
                    lam=lam).view(base.shape)


_CHUNK = 1 << 18  # positions per step on the CPU: the per-model slices and temporaries stay in cache


def _combine(chunk_deltas: Callable[[int, int, Any], torch.Tensor], scratch: Callable[[], Any], w: torch.Tensor,
             flat_base: torch.Tensor, *, consensus: bool, normalize: bool, lam: float) -> torch.Tensor:
    """Sign election, sum, division and ``base + lambda * D`` from weighted deltas ``[models, positions]``,
    ``chunk_deltas(start, stop, buffers)`` giving the columns ``start:stop`` (ours to modify; ``buffers`` is what
    ``scratch()`` made for the calling thread, see ``run_spans``).

    Every step works per position across the models, so it runs in chunks of positions: the same operations on
    every element (bit-identical to one whole-tensor pass), while the temporaries (signs, masks, sums) are a
    chunk in size instead of several full-size copies of the deltas."""
    out = torch.empty_like(flat_base)
    n = flat_base.numel()
    if not consensus:
        divisor = w.sum(dim=0)
        divisor.masked_fill_(divisor.abs() < 1e-8, 1)

    def combine(start: int, stop: int, buffers: Any) -> None:
        chunk = chunk_deltas(start, stop, buffers)
        if consensus:
            mask = sign_consensus(chunk)
            merged = sum_over_models(chunk.mul_(mask))
            agreeing = sum_over_models(mask.mul_(w))
            del mask
            agreeing.masked_fill_(agreeing == 0, 1)
        else:
            merged = sum_over_models(chunk)
        if normalize:
            merged /= agreeing if consensus else divisor
        if lam != 1:
            merged *= lam
        torch.add(merged, flat_base[start:stop], out=out[start:stop])

    run_spans(n, _CHUNK, flat_base.device, combine, scratch)
    return out


# ---- the registered methods ---------------------------------------------------------------------------
# Shared keyword arguments: ``weights`` (required) and ``densities`` (default 1.0) per non-base model;
# ``normalize``, ``rescale`` (defaults per method, as mergekit), ``lam`` (spec name "lambda") and ``int8_mask``.


def task_arithmetic(
    base, others, *, weights, densities=None, normalize=False, rescale=False, lam=1.0, int8_mask=False
):
    """Task Arithmetic (Ilharco et al., arXiv:2212.04089): ``b + lambda * sum_i w_i (x_i - b)``, divided by
    ``sum_i w_i`` if ``normalize``. ``densities`` and ``rescale`` are accepted (mergekit declares them) but unused."""
    return generalized_task_arithmetic(
        base, others, weights=weights, sparsify=None, consensus=False, normalize=normalize, lam=lam
    )


def ties(base, others, *, weights, densities=None, normalize=True, rescale=False, lam=1.0, int8_mask=False):
    """TIES-Merging (Yadav et al., arXiv:2306.01708): trim each delta to its top-``density`` magnitudes, elect
    the sign of the weighted sum, and sum the agreeing weighted deltas (divided by the agreeing weights)."""
    dens = _per_model(densities, len(others), 1.0, "density")

    def trim(delta, i):
        return sp.magnitude(delta, dens[i], rescale=rescale)

    return generalized_task_arithmetic(
        base, others, weights=weights, sparsify=trim, consensus=True, normalize=normalize, lam=lam, independent=True
    )


def _dare(base, others, weights, densities, normalize, rescale, lam, generator, consensus):
    dens = _per_model(densities, len(others), 1.0, "density")

    def drop(delta, i):
        return sp.bernoulli(delta, dens[i], rescale=rescale, generator=generator)

    return generalized_task_arithmetic(
        base, others, weights=weights, sparsify=drop, consensus=consensus, normalize=normalize, lam=lam
    )


def dare_ties(
    base, others, *, weights, densities=None, normalize=False, rescale=True, lam=1.0, int8_mask=False, generator=None
):
    """DARE + TIES (Yu et al., arXiv:2311.03099): drop entries at random, keeping each with probability
    ``density`` (L1-rescaled), then the TIES sign election."""
    return _dare(base, others, weights, densities, normalize, rescale, lam, generator, consensus=True)


def dare_linear(
    base, others, *, weights, densities=None, normalize=False, rescale=True, lam=1.0, int8_mask=False, generator=None
):
    """DARE (Yu et al., arXiv:2311.03099): drop entries at random, keeping each with probability ``density``
    (L1-rescaled), then task arithmetic."""
    return _dare(base, others, weights, densities, normalize, rescale, lam, generator, consensus=False)


def _breadcrumbs(base, others, weights, densities, gammas, normalize, rescale, lam, consensus):
    dens = _per_model(densities, len(others), 1.0, "density")
    gam = _per_model(gammas, len(others), 0.01, "gamma")

    def crumbs(delta, i):
        return sp.magnitude_outliers(delta, dens[i], gam[i], rescale=rescale)

    return generalized_task_arithmetic(
        base, others, weights=weights, sparsify=crumbs, consensus=consensus, normalize=normalize, lam=lam,
        independent=True,
    )


def breadcrumbs(
    base, others, *, weights, densities=None, gammas=None, normalize=False, rescale=False, lam=1.0, int8_mask=False
):
    """Model Breadcrumbs (Davari & Belilovsky, arXiv:2312.06795): drop the ``gamma`` fraction of largest
    magnitudes and the smallest ones, keeping ``density``, then task arithmetic."""
    return _breadcrumbs(base, others, weights, densities, gammas, normalize, rescale, lam, consensus=False)


def breadcrumbs_ties(
    base, others, *, weights, densities=None, gammas=None, normalize=False, rescale=False, lam=1.0, int8_mask=False
):
    """Model Breadcrumbs (arXiv:2312.06795) sparsification followed by the TIES sign election."""
    return _breadcrumbs(base, others, weights, densities, gammas, normalize, rescale, lam, consensus=True)


def _della(base, others, weights, densities, epsilons, normalize, rescale, lam, generator, consensus):
    dens = _per_model(densities, len(others), 1.0, "density")
    eps = _per_model(epsilons, len(others), 0.15, "epsilon")

    def magprune(delta, i):
        return sp.della_magprune(delta, dens[i], eps[i], rescale=rescale, generator=generator)

    return generalized_task_arithmetic(
        base, others, weights=weights, sparsify=magprune, consensus=consensus, normalize=normalize, lam=lam
    )


def della(
    base, others, *, weights, densities=None, epsilons=None, normalize=True, rescale=True, lam=1.0,
    int8_mask=False, generator=None,
):
    """DELLA-Merging (Deep et al., arXiv:2406.11617): MagPrune (keep-probability ``density ± epsilon`` by
    magnitude rank, L1-rescaled), then the TIES sign election."""
    return _della(base, others, weights, densities, epsilons, normalize, rescale, lam, generator, consensus=True)


def della_linear(
    base, others, *, weights, densities=None, epsilons=None, normalize=False, rescale=True, lam=1.0,
    int8_mask=False, generator=None,
):
    """DELLA MagPrune (arXiv:2406.11617) followed by task arithmetic (no sign election)."""
    return _della(base, others, weights, densities, epsilons, normalize, rescale, lam, generator, consensus=False)


# ---- parameter declarations and validation ------------------------------------------------------------


def _values(params: dict[str, Any], *keys: str) -> list[Any] | None:
    """A resolved parameter by spec name or keyword, as a list (scalars broadcast); None if absent."""
    for key in keys:
        if key in params and params[key] is not None:
            value = params[key]
            return list(value) if isinstance(value, (list, tuple)) else [value]
    return None


def _check_della(params: dict[str, Any]) -> None:
    densities = _values(params, "densities", "density") or [1.0]
    epsilons = _values(params, "epsilons", "epsilon") or [0.15]
    if len(densities) == 1:
        densities = densities * len(epsilons)
    if len(epsilons) == 1:
        epsilons = epsilons * len(densities)
    for density, epsilon in zip(densities, epsilons):
        if 0 < density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
            raise ValueError(
                f"epsilon: density ± epsilon must lie inside (0, 1) for della; got density={density}, "
                f"epsilon={epsilon}"
            )


def _params(normalize: bool, rescale: bool, extra: tuple[Param, ...] = ()) -> tuple[Param, ...]:
    return (
        Param("int8_mask", bool, default=False, help="compatibility only; the sign mask is always boolean"),
        Param("normalize", bool, default=normalize, help="divide by the sum of (agreeing) weights"),
        Param("rescale", bool, default=rescale, help="restore each sparsified delta's L1 norm"),
        Param("lambda", float, default=1.0, kwarg="lam", help="scale of the merged task vector"),
        Param("weight", float, scope="model", default=REQUIRED, kwarg="weights", help="task vector weight"),
        Param("density", float, scope="model", default=1.0, kwarg="densities", help="fraction of entries kept"),
        *extra,
    )


_GAMMA = Param("gamma", float, scope="model", default=0.01, kwarg="gammas",
               help="fraction of largest-magnitude outliers dropped")
_EPSILON = Param("epsilon", float, scope="model", default=0.15, kwarg="epsilons",
                 help="half-width of the keep-probability range across magnitude ranks")


def _register(func, summary, paper, *, normalize, rescale, extra=(), random=False, check=None):
    register(
        MergeMethod(
            name=func.__name__,
            func=func,
            params=_params(normalize, rescale, extra),
            base="required",
            min_inputs=1,
            random=random,
            compute_bound=func is not task_arithmetic,  # selection or sampling on top of the sums
            parallel_models=func in (ties, breadcrumbs, breadcrumbs_ties),  # one selection per model
            rowwise=func is task_arithmetic,  # the others select or sample over the whole tensor
            summary=summary,
            paper=paper,
            check=check,
        )
    )


_register(task_arithmetic, "Add weighted task vectors (model - base) to the base.",
          "https://arxiv.org/abs/2212.04089", normalize=False, rescale=False)
_register(ties, "Trim task vectors to their largest entries, elect signs, merge the agreeing ones.",
          "https://arxiv.org/abs/2306.01708", normalize=True, rescale=False)
_register(dare_ties, "Drop task-vector entries at random (DARE), then TIES sign election.",
          "https://arxiv.org/abs/2311.03099", normalize=False, rescale=True, random=True)
_register(dare_linear, "Drop task-vector entries at random (DARE), then add the task vectors.",
          "https://arxiv.org/abs/2311.03099", normalize=False, rescale=True, random=True)
_register(breadcrumbs, "Drop the largest outliers and the smallest task-vector entries, then add them.",
          "https://arxiv.org/abs/2312.06795", normalize=False, rescale=False, extra=(_GAMMA,))
_register(breadcrumbs_ties, "Breadcrumbs sparsification followed by TIES sign election.",
          "https://arxiv.org/abs/2312.06795", normalize=False, rescale=False, extra=(_GAMMA,))
_register(della, "Drop entries at random, less likely the larger they are (DELLA), then TIES sign election.",
          "https://arxiv.org/abs/2406.11617", normalize=True, rescale=True, extra=(_EPSILON,), random=True,
          check=_check_della)
_register(della_linear, "Drop entries at random, less likely the larger they are (DELLA), then add them.",
          "https://arxiv.org/abs/2406.11617", normalize=False, rescale=True, extra=(_EPSILON,), random=True,
          check=_check_della)
