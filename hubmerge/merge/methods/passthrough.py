"""Passthrough: copy a single input (used for frankenmerges / layer stacking)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hubmerge.merge.methods.registry import MergeMethod, Param, register


def passthrough(
    base: None, others: Sequence[torch.Tensor], *, scales: Sequence[float | None] | None = None
) -> torch.Tensor:
    """Return the only input unchanged, or ``x * scale`` when its ``scale`` is set (as mergekit)."""
    if len(others) != 1:
        raise ValueError(f"passthrough: needs exactly one input, got {len(others)}")
    scale = scales[0] if scales else None
    return others[0] if scale is None else others[0] * scale


register(
    MergeMethod(
        name="passthrough",
        func=passthrough,
        params=(
            Param("scale", float, scope="model", default=None, kwarg="scales", includes_base=True,
                  help="optional multiplier of the tensor"),
        ),
        base="ignored",
        min_inputs=1,
        max_inputs=1,
        rowwise=True,
        summary="Copy the single input tensor, optionally scaled (frankenmerges, layer stacking).",
        paper="https://arxiv.org/abs/2312.15166",
    )
)
