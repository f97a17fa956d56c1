"""Reinforced Agent Merging (RAM and RAM+ tensor-local, arXiv:2601.13572)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hubmerge.merge.methods.registry import MergeMethod, Param, register


def _prepare(others: Sequence[torch.Tensor], base: torch.Tensor, epsilon: float):
    flat = torch.stack([x - base for x in others], dim=0).view(len(others), -1)
    active = flat.abs() > epsilon
    counts = active.sum(dim=0, keepdim=True)
    return flat, active, counts, counts > 1, counts == 1


def ram(base: torch.Tensor, others: Sequence[torch.Tensor], *, epsilon: float = 1e-5) -> torch.Tensor:
    """Entries with ``|tau_i| > epsilon`` are active; an entry active in one model is taken as is, one active in
    c > 1 models is averaged over them: ``out = b + sum_i tau_i a_i (1[c=1] + 1[c>1]/c)``. As mergekit."""
    if not others:
        return base
    flat, active, counts, shared, unique = _prepare(others, base, epsilon)
    masked = flat * active
    merged = ((masked * unique) + (masked * shared / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


def ramplus_tl(
    base: torch.Tensor, others: Sequence[torch.Tensor], *, r: float = 0.1, alpha: float = 0.2, epsilon: float = 1e-5
) -> torch.Tensor:
    """RAM+ (tensor-local): like :func:`ram`, but model i's unique entries are scaled by
    ``1 + r * clip(rho_i, 0, alpha)`` with ``rho_i = #shared active / #unique active`` in this tensor. As mergekit
    (the float32 scale promotes bf16/fp16 results to float32)."""
    if not others:
        return base
    flat, active, counts, shared, unique = _prepare(others, base, epsilon)
    rho = (active & shared).sum(dim=1) / (active & unique).sum(dim=1).clamp(min=epsilon)
    scale = 1 + r * rho.clamp(min=0, max=alpha)
    masked = flat * active
    boosted = masked * unique * scale.unsqueeze(-1)
    merged = (boosted + (masked * shared / counts.clamp(min=1))).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


register(
    MergeMethod(
        name="ram",
        func=ram,
        compute_bound=True,
        params=(Param("epsilon", float, default=1e-5, help="threshold for an entry to count as changed"),),
        base="required",
        min_inputs=1,
        summary="Keep entries changed by one model, average those changed by several.",
        paper="https://arxiv.org/abs/2601.13572",
    )
)
register(
    MergeMethod(
        name="ramplus_tl",
        func=ramplus_tl,
        compute_bound=True,
        params=(
            Param("r", float, default=0.1, help="boost strength for unique entries"),
            Param("alpha", float, default=0.2, help="cap on the shared/unique ratio"),
            Param("epsilon", float, default=1e-5, help="threshold for an entry to count as changed"),
        ),
        base="required",
        min_inputs=1,
        summary="RAM with unique entries boosted by how much each model overlaps with the others.",
        paper="https://arxiv.org/abs/2601.13572",
    )
)
