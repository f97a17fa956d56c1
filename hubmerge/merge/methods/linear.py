"""Linear merge ("model soups", Wortsman et al., arXiv:2203.05482)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hubmerge.merge.methods.registry import REQUIRED, MergeMethod, Param, register


def linear(
    base: None, others: Sequence[torch.Tensor], *, weights: Sequence[float], normalize: bool = True
) -> torch.Tensor:
    """Weighted average ``sum_i w_i x_i / sum_i w_i`` (or the plain weighted sum if not ``normalize``).

    ``others`` holds every input, the base model included when it is one. Like mergekit, the sum is accumulated
    in float32 (float64 for float64 inputs) with one fused multiply-add per input in input order, then divided by
    the float32 sum of the weights (a zero sum gives inf/NaN, as in mergekit); the result has the input dtype.
    """
    if not others:
        raise ValueError("linear: needs at least one input")
    first = others[0]
    if not first.is_floating_point():
        raise TypeError("linear: inputs must be floating point")
    if len(weights) != len(others):
        raise ValueError(f"weight: expected {len(others)} values (one per input), got {len(weights)}")
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    coefficients = torch.tensor([list(weights)], dtype=dtype, device=first.device)  # [1, inputs], as mergekit
    shape = (1,) * first.dim()
    result = torch.zeros_like(first, dtype=dtype)
    for tensor, coefficient in zip(others, coefficients.unbind(1)):
        result.addcmul_(tensor, coefficient.reshape(shape))
    if normalize:
        result.div_(coefficients.sum(dim=1).reshape(shape))
    return result.to(first.dtype)


register(
    MergeMethod(
        name="linear",
        func=linear,
        params=(
            Param("weight", float, scope="model", default=REQUIRED, kwarg="weights", includes_base=True,
                  help="weight of each input (the base model too, when it is an input)"),
            Param("normalize", bool, default=True, help="divide by the sum of the weights"),
        ),
        base="ignored",
        min_inputs=1,
        summary="Weighted average of the inputs.",
        paper="https://arxiv.org/abs/2203.05482",
    )
)
