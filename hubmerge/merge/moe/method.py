"""The executor's function for MoE parts: what each planned part becomes, given the router rows.

Every part of an MoE plan is one of: an input tensor copied as it is (the base's attention, norms,
embeddings), an expert's MLP tensor (noise and residual scale applied), a layer's router rows, or zeros
(attention biases Qwen2-MoE has and a Llama base lacks). The executor casts the result to the output dtype.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import torch

from hubmerge.merge.methods.registry import MergeMethod
from hubmerge.merge.moe.gates import noise_and_scale


def bind_parts(rows: dict[str, torch.Tensor] | Future) -> MergeMethod:
    """The MoE part function over ``rows`` ({"router" | "shared router": [layers, experts, hidden]}), or over a
    future of them still being computed: router parts (planned last) wait for it, and every part fails as
    soon as computing them has failed."""

    def router_rows() -> dict[str, torch.Tensor]:
        return rows.result() if isinstance(rows, Future) else rows

    def moe_part(base: Any, others: list[torch.Tensor], *, op: str, generator: torch.Generator, **kwargs: Any):
        if isinstance(rows, Future) and rows.done():
            router_rows()  # raises what computing the rows raised, without streaming the rest first
        if op == "router":
            return router_rows()[kwargs["group"]][kwargs["layer"]]
        if op == "zeros":
            return torch.zeros(kwargs["shape"], dtype=torch.float32)
        if op == "copy":
            return others[0]
        if op == "expert":
            return noise_and_scale(others[0], noise_scale=kwargs["noise_scale"],
                                   residual_scale=kwargs["residual_scale"], generator=generator)
        raise ValueError(f"unknown MoE part {op!r}")

    # random: every part gets a generator seeded from (hubmerge.seed, tensor, part), used only for noise.
    # compute_bound: the executor then leaves torch's threads as they are, for the router rows computed beside it.
    return MergeMethod(name="moe", func=moe_part, random=True, compute_bound=True,
                       summary="mixture of experts (mergekit-moe)", paper="https://goddard.blog/posts/clown-moe/")
