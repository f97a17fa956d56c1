"""Spherical methods: slerp, nuslerp, multislerp, karcher. Each reproduces mergekit 0.1.5's arithmetic exactly
(same dtypes, same reductions, same fallbacks), so outputs are bitwise equal."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hubmerge.merge.methods.registry import REQUIRED, MergeMethod, Param, register

_SLERP_CHUNK = 1024 * 1024  # mergekit's chunk for its float32 scratch; chunking changes the rounding, so keep it
_DOT_THRESHOLD = 0.9995


def slerp(base: torch.Tensor, others: Sequence[torch.Tensor], *, t: float) -> torch.Tensor:
    """Spherical linear interpolation from the base (t=0) to the other model (t=1) (Shoemake 1985).

    With ``a``, ``b`` the flattened tensors, ``d = clamp(a/|a| . b/|b|, -1, 1)`` (norms <= 1e-8 count as 1) and
    ``theta = acos d``: ``out = sin((1-t) theta)/sin theta * a + sin(t theta)/sin theta * b``. If ``|d| > 0.9995``
    (colinear or antipodal) it falls back to ``(1-t) a + t b``. Computed in float32 (float64 for float64 inputs)
    in chunks of 2^20 elements exactly like mergekit (norms are norms of per-chunk norms); returns the input dtype.
    """
    if len(others) != 1:
        raise ValueError(f"slerp: needs the base and exactly one other model, got {len(others)} others")
    v0, v1 = base, others[0]
    if not v0.is_floating_point():
        raise TypeError("slerp: inputs must be floating point")
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    tt = torch.tensor([t], dtype=dtype, device=v0.device).reshape(-1, 1)
    size = a.shape[1]
    if not size:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    chunks = [slice(i, i + _SLERP_CHUNK) for i in range(0, size, _SLERP_CHUNK)]
    eps = 1e-8

    def norm(x: torch.Tensor) -> torch.Tensor:
        parts = [torch.linalg.vector_norm(x[:, c].to(dtype), dim=1, keepdim=True) for c in chunks]
        total = torch.linalg.vector_norm(torch.stack(parts), dim=0)
        return torch.where(total > eps, total, 1)

    norm_a, norm_b = norm(a), norm(b)
    # normalize before multiplying (as mergekit) so the raw dot product cannot overflow
    parts = [((a[:, c].to(dtype) / norm_a) * (b[:, c].to(dtype) / norm_b)).sum(dim=1, keepdim=True) for c in chunks]
    dot = torch.stack(parts).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > _DOT_THRESHOLD
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear, tt, torch.sin(tt * theta) / sin_theta)
    result = torch.empty_like(a)
    for c in chunks:
        result[:, c] = coef_a * a[:, c].to(dtype) + coef_b * b[:, c].to(dtype)
    return result.reshape(v0.shape)


def _nuslerp_vectors(t: float, v0: torch.Tensor, v1: torch.Tensor, dim: int, flatten: bool) -> torch.Tensor:
    """SLERP between corresponding vectors (along ``dim``, or of the flattened tensors), in the input dtype."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)

    cos_theta = torch.sum(unit(v0) * unit(v1), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos_theta.square()) <= 1e-8**2
    theta = torch.acos(torch.where(colinear, 0, cos_theta))
    sin_theta = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if dim != -1 and not flatten:
        out = out.transpose(dim, -1)
    return out.reshape(shape)


def nuslerp(
    base: torch.Tensor | None,
    others: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    nuslerp_flatten: bool = True,
    nuslerp_row_wise: bool = False,
) -> torch.Tensor:
    """NuSLERP: SLERP between two models with ``t = w_2 / (w_1 + w_2)`` (0.5 if the sum is ~0).

    With a base, interpolates the task vectors: ``b + slerp(t, x_1 - b, x_2 - b)``. ``nuslerp_flatten`` treats the
    whole tensor as one vector; otherwise rows (last dim) are interpolated separately, or columns (dim 0) with
    ``nuslerp_row_wise``. Colinear vectors (``1 - cos^2 <= 1e-16``) are interpolated linearly. Computed in the
    input dtype.
    """
    if len(others) != 2:
        raise ValueError(f"nuslerp: needs exactly two non-base models, got {len(others)}")
    if len(weights) != 2:
        raise ValueError(f"weight: expected 2 values, got {len(weights)}")
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    dim = 0 if nuslerp_row_wise else -1
    if base is None:
        return _nuslerp_vectors(t, others[0], others[1], dim, nuslerp_flatten)
    return base + _nuslerp_vectors(t, others[0] - base, others[1] - base, dim, nuslerp_flatten)


def multislerp(
    base: torch.Tensor | None,
    others: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Barycentric SLERP of any number of models (optionally of task vectors relative to the base).

    ``u_i = x_i / (|x_i| + eps)``, ``m = normalize(sum_i w_i u_i)``, tangent vectors ``v_i = u_i - (u_i . m) m``,
    ``T = sum_i w_i v_i``; ``out = (cos|T| m + sin|T| T/|T|) * sum_i w_i |x_i|`` (``|T|`` includes +eps). Weights
    are normalized to sum 1 unless ``normalize_weights`` is false. If ``|sum_i w_i u_i| < eps`` two models are
    interpolated linearly, more raise ValueError. A single model is returned unchanged. Input dtype throughout.
    """
    if not others:
        raise ValueError("multislerp: needs at least one non-base model")
    if len(weights) != len(others):
        raise ValueError(f"weight: expected {len(others)} values, got {len(weights)}")
    if len(others) == 1:
        return others[0]
    stacked = torch.stack(list(others), dim=0)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] != 2:
            raise ValueError(
                "multislerp: the weighted sum of the normalized inputs is zero (antipodal inputs with "
                "balancing weights); use different weights"
            )
        out = (stacked[0] * w[0] + stacked[1] * w[1]).view(stacked.shape[1:])
        return out if base is None else out + base
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * w.view(-1, 1)).sum(0)
    length = torch.norm(tangent) + eps
    out = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
    out = (out * (norms.squeeze(-1) * w).sum()).view(stacked.shape[1:])
    return out if base is None else out + base


def karcher(base: None, others: Sequence[torch.Tensor], *, max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    """Karcher (Riemannian/Frechet) mean on the unit sphere, all inputs weighted 1/N (arXiv:2603.04972).

    ``u_i = x_i/|x_i|``; start from the normalized mean of the ``u_i`` (inputs with norm <= tol are left out);
    repeat up to ``max_iter`` times: ``T = sum_i a_i theta_i/sin(theta_i) (u_i - cos(theta_i) m)``,
    ``m <- cos|T| m + sin|T| T/|T|`` (renormalized), stop when ``|T| < tol``. Output ``m * sum_i a_i |x_i|``.
    Norms in float32 (float64 for float64), iterates in the input dtype, as mergekit.
    """
    tensors = list(others)
    if not tensors:
        raise ValueError("karcher: needs at least one input")
    if len(tensors) == 1:
        return tensors[0]
    alphas = [1.0 / len(tensors)] * len(tensors)
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    norms, units = [], []
    for x in tensors:
        n = torch.linalg.vector_norm(x.to(dtype))
        norms.append(n)
        units.append(torch.zeros_like(x) if n.item() == 0.0 else (x / n).to(x.dtype))
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return sum(x * 0 for x in tensors)
    alpha_sum = sum(alphas[i] for i in valid)
    coeffs = [alphas[i] / alpha_sum for i in valid]
    vecs = [units[i] for i in valid]

    mean = torch.zeros_like(vecs[0])
    for a, u in zip(coeffs, vecs):
        mean += a * u
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = vecs[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(coeffs, vecs):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        length = torch.linalg.vector_norm(tangent.to(dtype))
        if length.item() < tol:
            break
        mean = (torch.cos(length) * mean + torch.sin(length) * (tangent / length)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    scale = sum(a * n for a, n in zip(alphas, norms))
    return scale * mean


register(
    MergeMethod(
        name="slerp",
        func=slerp,
        params=(Param("t", float, help="interpolation factor: 0 = base, 1 = the other model"),),
        base="required",
        min_inputs=2,
        max_inputs=2,
        summary="Spherical linear interpolation between the base and one other model.",
        paper="https://en.wikipedia.org/wiki/Slerp",
    )
)
register(
    MergeMethod(
        name="nuslerp",
        func=nuslerp,
        params=(
            Param("weight", float, scope="model", default=REQUIRED, kwarg="weights",
                  help="relative weight of each model"),
            Param("nuslerp_flatten", bool, default=True, help="interpolate whole tensors, not rows"),
            Param("nuslerp_row_wise", bool, default=False, help="interpolate along dim 0 instead of the last dim"),
        ),
        base="optional",
        min_inputs=2,
        max_inputs=3,
        summary="SLERP of two models (or their task vectors) with weights instead of t.",
        paper="https://en.wikipedia.org/wiki/Slerp",
    )
)
register(
    MergeMethod(
        name="multislerp",
        func=multislerp,
        params=(
            Param("weight", float, scope="model", default=REQUIRED, kwarg="weights", help="weight of each model"),
            Param("normalize_weights", bool, default=True, help="rescale the weights to sum to 1"),
            Param("eps", float, default=1e-8, help="numerical stability constant"),
        ),
        base="optional",
        min_inputs=1,
        summary="Barycentric spherical interpolation of any number of models.",
        paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    )
)
register(
    MergeMethod(
        name="karcher",
        func=karcher,
        compute_bound=True,
        params=(
            Param("max_iter", int, default=10, help="maximum iterations"),
            Param("tol", float, default=1e-5, help="convergence tolerance"),
        ),
        base="ignored",
        min_inputs=1,
        summary="Riemannian (Karcher) mean of the inputs on the unit sphere.",
        paper="https://arxiv.org/abs/2603.04972",
    )
)
