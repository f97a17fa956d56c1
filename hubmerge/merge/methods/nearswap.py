"""NearSwap (alchemonaut, QuartetAnemoi-70B)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hubmerge.merge.methods.registry import MergeMethod, Param, register


def nearswap(base: torch.Tensor, others: Sequence[torch.Tensor], *, t: float) -> torch.Tensor:
    """Take the other model's value where it is close to the base's.

    ``w = clamp(t / max(|b - x|, 1e-6), 0, 1)``; ``out = w x + (1 - w) b``: parameters within ``t`` of each other
    are swapped entirely, farther ones move proportionally less. Input dtype, as mergekit.
    """
    if len(others) != 1:
        raise ValueError(f"nearswap: needs the base and exactly one other model, got {len(others)} others")
    other = others[0]
    weight = (t / torch.abs(base - other).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base


register(
    MergeMethod(
        name="nearswap",
        func=nearswap,
        params=(Param("t", float, help="similarity threshold (absolute difference)"),),
        base="required",
        min_inputs=2,
        max_inputs=2,
        rowwise=True,
        summary="Swap in the other model's parameters where they are close to the base's.",
        paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    )
)
