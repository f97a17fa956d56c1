"""The executor's function for MoE parts: what each planned part becomes, given the router rows.

Every part of an MoE plan is one of: an input tensor copied as it is (the base's attention, norms,
embeddings), an expert's MLP tensor (noise and residual scale applied), a layer's router rows, or zeros
(attention biases Qwen2-MoE has and a Llama base lacks). The executor casts the result to the output dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from hubmerge.merge.methods.registry import MergeMethod
from hubmerge.merge.moe.gates import noise_and_scale


def bind_parts(rows: dict[str, torch.Tensor]) -> MergeMethod:
    """The MoE part function over ``rows`` ({"router" | "shared router": [layers, experts, hidden]})."""

    def moe_part(base: Any, others: list[torch.Tensor], *, op: str, generator: torch.Generator, **kwargs: Any):
        if op == "router":
            return rows[kwargs["group"]][kwargs["layer"]]
        if op == "zeros":
            return torch.zeros(kwargs["shape"], dtype=torch.float32)
        if op == "copy":
            return others[0]
        if op == "expert":
            return noise_and_scale(others[0], noise_scale=kwargs["noise_scale"],
                                   residual_scale=kwargs["residual_scale"], generator=generator)
        raise ValueError(f"unknown MoE part {op!r}")

    # random: every part gets a generator seeded from (hubmerge.seed, tensor, part), used only for noise.
    return MergeMethod(name="moe", func=moe_part, random=True, summary="mixture of experts (mergekit-moe)",
                       paper="https://goddard.blog/posts/clown-moe/")
