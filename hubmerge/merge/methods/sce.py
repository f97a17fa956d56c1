"""SCE: Select, Calculate, Erase (FuseChat 2.0, Wan et al., arXiv:2408.07990)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hubmerge.merge.methods.registry import MergeMethod, Param, register
from hubmerge.merge.methods.task_arithmetic import sign_consensus


def _select_mask(tvs: torch.Tensor, fraction: float, dtype: torch.dtype) -> torch.Tensor:
    """Keep the ``int(nnz(var) * fraction)`` positions of largest variance across models (``torch.topk``)."""
    if fraction <= 0:
        return torch.zeros_like(tvs[0], dtype=dtype)
    if fraction >= 1:
        return torch.ones_like(tvs[0], dtype=dtype)
    var = torch.var(tvs, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction)  # a float32 product, as mergekit computes it
    mask = torch.zeros_like(var, dtype=dtype)
    if k:
        mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
    return mask


def sce(
    base: torch.Tensor, others: Sequence[torch.Tensor], *, select_topk: float = 1.0, int8_mask: bool = False
) -> torch.Tensor:
    """``tau_i = x_i - b``. Select: if ``select_topk < 1`` keep only the top ``select_topk`` fraction of positions by
    variance across models. Calculate: ``w_i = mean(tau_i^2) / sum_j mean(tau_j^2)`` (uniform if ~0). Erase: TIES
    sign election ``m_i``. ``out = b + sum_i w_i m_i tau_i / max(sum_i w_i m_i, 1e-6)``. Input dtype, as mergekit.
    """
    if not others:
        return base
    mask_dtype = torch.int8 if int8_mask else base.dtype
    tvs = torch.stack([x - base for x in others], dim=0)
    if select_topk < 1:
        tvs = tvs * _select_mask(tvs, select_topk, mask_dtype).unsqueeze(0)
    agree = sign_consensus(tvs)
    weights = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    total = torch.sum(weights).item()
    weights = torch.ones_like(weights) / weights.shape[0] if abs(total) < 1e-6 else weights / total
    weights = weights.view(-1, *([1] * (tvs.dim() - 1))) * agree
    merged = (tvs * weights).sum(dim=0)
    return base + merged / torch.sum(weights, dim=0).clamp(min=1e-6)


register(
    MergeMethod(
        name="sce",
        func=sce,
        compute_bound=True,
        params=(
            Param("int8_mask", bool, default=False, help="store the selection mask as int8 (no effect on the result)"),
            Param("select_topk", float, default=1.0, help="fraction of highest-variance positions kept"),
        ),
        base="required",
        min_inputs=1,
        summary="Select high-variance positions, weight task vectors by energy, erase sign conflicts.",
        paper="https://arxiv.org/abs/2408.07990",
    )
)
