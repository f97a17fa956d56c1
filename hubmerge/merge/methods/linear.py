"""Linear merge ("model soups", Wortsman et al., arXiv:2203.05482)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hubmerge.merge.methods._chunks import chunk_length, run_spans
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
    per_input = [c.reshape(1) for c in coefficients.unbind(1)]
    total = coefficients.sum(dim=1).reshape(1)
    flat_inputs = [t.reshape(-1) for t in others]
    out = torch.empty(first.numel(), dtype=first.dtype, device=first.device)

    # Elementwise, so computing it in cache-sized chunks performs exactly the same operations per element
    # (bit-identical) while the float32 accumulator never leaves the CPU cache: memory traffic drops from
    # ~40 to ~8 bytes per element.
    length = min(chunk_length(first.numel(), _CHUNK, first.device), first.numel())

    def buffers() -> tuple[torch.Tensor, torch.Tensor]:  # the accumulator and the widened input
        return tuple(torch.empty(length, dtype=dtype, device=first.device) for _ in range(2))

    def chunk(start: int, end: int, scratch: tuple[torch.Tensor, torch.Tensor]) -> None:
        a, w = (buffer[: end - start] for buffer in scratch)
        a.zero_()
        for tensor, coefficient in zip(flat_inputs, per_input):
            w.copy_(tensor[start:end])
            a.addcmul_(w, coefficient)
        if normalize:
            a.div_(total)
        out[start:end].copy_(a)

    run_spans(first.numel(), _CHUNK, first.device, chunk, buffers)
    return out.reshape(first.shape)


_CHUNK = 1 << 18  # 256K elements: 1 MiB of float32 accumulator, 2 MiB with the widened input


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
        rowwise=True,
        summary="Weighted average of the inputs.",
        paper="https://arxiv.org/abs/2203.05482",
    )
)
