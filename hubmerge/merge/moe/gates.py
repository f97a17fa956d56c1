"""Router ("gate") initialisation and expert weight transforms: pure tensor functions.

A router row per expert and layer; a token goes to the experts whose rows its hidden state matches best.
mergekit-moe 0.1.5's recipes (https://goddard.blog/posts/clown-moe/), reproduced op for op so the rows are
bit-identical to its own:

* ``hidden``: the input of each layer (the embeddings for layer 0, layer i-1's output for layer i) at each
  prompt's last token, averaged over the prompts; ``hidden_avg`` averages over every position instead;
* ``cheap_embed``: the sum of the prompts' token embeddings (padding masked out), normalised, the same
  vector for every layer;
* the negative prompts' vector is subtracted, then the row is normalised to unit length;
* ``random``: standard normal rows; ``uniform_random``: U(-1/sqrt(H), 1/sqrt(H)), torch.nn.Linear's default.

Random draws come from a generator the caller seeds per output tensor (not a global RNG, as mergekit's).
"""

from __future__ import annotations

import math

import torch


def layer_state(layer_input: torch.Tensor, *, average: bool) -> torch.Tensor:
    """[batch, hidden] from one layer's input for a batch of prompts ([batch, seq, hidden], left padded): the
    last position, or (``hidden_avg``) the mean over every position, padding included, as mergekit takes it."""
    if average:
        return layer_input.sum(dim=1) / layer_input.shape[1]
    return layer_input[:, -1, :].clone()


def prompts_mean(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """[layers, hidden]: the mean over the prompts of each layer's [batch, hidden] states, in their dtype."""
    states = torch.stack(per_layer)  # [layers, batch, hidden]
    return states.sum(dim=1) / states.shape[1]


def cheap_embedding(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, num_layers: int) -> torch.Tensor:
    """[layers, hidden]: the prompts' token embeddings ([batch, seq, hidden], float32) summed over the real
    (unmasked) positions and the prompts, normalised, repeated for every layer."""
    h = token_embeddings.float()
    summed = (h * attention_mask.unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
    return (summed / summed.norm(dim=-1, keepdim=True).clamp(min=1e-8)).repeat(num_layers, 1)


def embed_rows(embedding: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The embedding rows of ``input_ids`` in float32: what mergekit's one-hot matmul computes (one exact
    product per entry), without the [batch, seq, vocab] one-hot matrix. ``+ 0.0`` makes a -0.0 row entry
    +0.0, as the matmul's sum does."""
    return embedding[input_ids].float() + 0.0


def gate_rows(positive: torch.Tensor, negative: torch.Tensor | None = None) -> torch.Tensor:
    """[layers, hidden]: the positive prompts' vector minus the negative prompts', normalised per layer."""
    rows = positive.clone()
    if negative is not None:
        rows -= negative
    rows /= rows.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
    return rows


def random_rows(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """``gate_mode: random``: standard normal, float32."""
    return torch.randn(shape, generator=generator)


def uniform_rows(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """``gate_mode: uniform_random``: U(-s, s) with s = sqrt(1 / hidden), float32 (torch.nn.Linear's init)."""
    scale = math.sqrt(1.0 / shape[-1])
    return torch.rand(shape, generator=generator) * 2 * scale - scale


def noise_and_scale(tensor: torch.Tensor, *, noise_scale: float | None, residual_scale: float | None,
                    generator: torch.Generator | None) -> torch.Tensor:
    """An expert's MLP tensor as the MoE takes it, in its own dtype: plus ``noise_scale`` times standard
    normal noise, then (down projections only: the caller passes ``residual_scale`` for those) times
    ``residual_scale``."""
    if noise_scale is not None:
        noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        tensor = tensor + noise.to(tensor.device) * noise_scale
    if residual_scale is not None:
        tensor = tensor * residual_scale
    return tensor


def degenerate_layers(rows: torch.Tensor, threshold: float = 5.0) -> list[int]:
    """Layers whose router rows ([layers, experts, hidden]) are nearly linearly dependent (condition number
    above ``threshold``): some experts will hardly ever be chosen there."""
    return [i for i in range(rows.shape[0]) if torch.linalg.cond(rows[i].float()) > threshold]
