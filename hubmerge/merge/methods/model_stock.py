"""Model Stock (Jang et al., arXiv:2403.19522)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hubmerge.merge.methods.registry import MergeMethod, Param, register


def model_stock(base: torch.Tensor, others: Sequence[torch.Tensor], *, filter_wise: bool = False) -> torch.Tensor:
    """Interpolate between the base and the average of the fine-tuned models by their geometry.

    With offsets ``o_i = x_i - b`` (whole tensor, or per row if ``filter_wise``), ``cos`` = mean pairwise cosine
    of the offsets over i<j (norm products clamped to >= 1e-6) and N models:
    ``t = N cos / (1 + (N-1) cos)`` (``t = 0``, i.e. the base, where ``|1 + (N-1) cos| < 1e-6``);
    ``out = t * mean_i(x_i) + (1 - t) * b``. Computed in the input dtype exactly as mergekit.
    """
    if len(others) < 2:
        raise ValueError(f"model_stock: needs the base and at least two other models, got {len(others)} others")
    shape = base.shape
    w0, ws = base, list(others)
    if filter_wise:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos), (n * cos) / safe)
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


register(
    MergeMethod(
        name="model_stock",
        func=model_stock,
        params=(Param("filter_wise", bool, default=False, help="compute the ratio per row instead of per tensor"),),
        base="required",
        min_inputs=3,
        summary="Interpolate the base towards the models' average by the angle between their task vectors.",
        paper="https://arxiv.org/abs/2403.19522",
    )
)
