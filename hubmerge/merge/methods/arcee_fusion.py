"""Arcee Fusion (Arcee AI): keep only the other model's most important changes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hubmerge.merge.methods.registry import MergeMethod, register

_SAMPLE = 1_000_000


def _quantiles(scores: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Q1, median, Q3 of ``scores`` (``sorted[int(q * (n - 1))]``), from a 1M-element random sample (with
    replacement) when there are more elements, like mergekit. The sample indices are drawn on the generator's
    device (the CPU, from the executor) and moved to the scores, so the sample is the same on every device."""
    flat = scores.reshape(-1)
    if flat.numel() > _SAMPLE:
        where = generator.device if generator is not None else "cpu"
        flat = flat[torch.randint(flat.numel(), (_SAMPLE,), device=where, generator=generator).to(flat.device)]
    ordered = torch.sort(flat).values
    q = torch.tensor([0.25, 0.5, 0.75]).to(ordered.device)
    return list(ordered[(q * (ordered.numel() - 1)).long()])


def arcee_fusion(
    base: torch.Tensor, others: Sequence[torch.Tensor], *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Importance ``I = |x - b| * KL(softmax(x) || softmax(b))`` (softmax and KL along the last dim, +1e-8);
    ``out = b + (x - b) * [I >= median + 1.5 IQR]``.

    Quantiles are exact for tensors of at most 1M elements; larger tensors sample 1M indices with ``generator``
    (mergekit uses the global RNG, so only the sampling differs). Like mergekit, the mask is float32, so bf16 and
    fp16 inputs give a float32 result, and the planner writes it as float32 unless the spec sets ``out_dtype``
    (mergekit 0.1.5 does the same, ``dtype: bfloat16`` or not).
    """
    if len(others) != 1:
        raise ValueError(f"arcee_fusion: needs the base and exactly one other model, got {len(others)} others")
    x = others[0]
    eps = 1e-8
    p = F.softmax(x, dim=-1) + eps
    q = F.softmax(base, dim=-1) + eps
    importance = (x - base).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    del p, q
    q1, median, q3 = _quantiles(importance, generator)
    mask = (importance >= median + 1.5 * (q3 - q1)).float()
    del importance
    return base + (x - base) * mask


register(
    MergeMethod(
        name="arcee_fusion",
        compute_bound=True,
        func=arcee_fusion,
        base="required",
        min_inputs=2,
        max_inputs=2,
        random=True,
        result_promotes_to=torch.float32,
        summary="Take the other model's changes only where their KL-weighted importance is an outlier.",
        paper="https://arcee.ai",
    )
)
