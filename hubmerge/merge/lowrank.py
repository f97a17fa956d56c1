"""LoRA extraction: the difference between a fine-tune and its base, compressed to a rank-r product.

For one weight matrix (``m x n``, PEFT's ``(out, in)``):

    delta = W_ft - W_base = U diag(s) V^T                     (thin SVD, s descending)
    r     = min(max_rank, m, n), and with sv_epsilon > 0 only the s_i > sv_epsilon
    B     = U[:, :r] diag(sqrt(s[:r]))    A = diag(sqrt(s[:r])) V^T[:r]      (distribute_scale, default)
    B     = U[:, :r]                      A = diag(s[:r]) V^T[:r]            (otherwise)

so ``B @ A`` is the truncated SVD of ``delta``, which by the Eckart-Young-Mirsky theorem (Eckart & Young,
1936) is the best rank-r approximation in the Frobenius and the spectral norm. What is lost is known exactly:

    ||delta - B @ A||_F = sqrt(sum_{i>r} s_i^2)      ||delta - B @ A||_2 = s_{r+1} >= every entry's error

Stored with ``lora_alpha = r`` the PEFT scaling ``alpha / r`` is 1, so PEFT (and ``hubmerge merge
base+adapter``) add exactly ``B @ A``. Embedding (and GPT-2 ``Conv1D``) weights are decomposed transposed,
as PEFT stores their factors. LoRA: Hu et al. 2021, https://arxiv.org/abs/2106.09685. The split of the
singular values between A and B is the one mergekit-extract-lora 0.1.5 uses.

Pure functions on tensors: no I/O; the caller picks the device and reads and writes the tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LowRankFactors:
    """``b @ a`` approximates the delta; the norms say how well (all in float32 arithmetic)."""

    a: torch.Tensor  # (r, n)
    b: torch.Tensor  # (m, r)
    rank: int
    delta_norm: float  # ||delta||_F
    residual_norm: float  # sqrt of the sum of the discarded s_i^2: ||delta - b @ a||_F
    top_discarded: float  # s_{r+1} (0 when nothing was discarded): bounds every entry's error


def kept_rank(singular_values: torch.Tensor, max_rank: int, sv_epsilon: float = 0.0) -> int:
    """How many singular values to keep: at most ``max_rank``, and with ``sv_epsilon > 0`` only those above it."""
    rank = min(max_rank, singular_values.numel())
    if sv_epsilon > 0:
        rank = min(rank, int((singular_values > sv_epsilon).sum()))
    return rank


def low_rank_factors(delta: torch.Tensor, max_rank: int, *, sv_epsilon: float = 0.0,
                     distribute_scale: bool = True) -> LowRankFactors:
    """Truncated-SVD factors ``(A, B)`` of a 2-D float32 ``delta`` (see the module docstring).

    ``rank`` may come out 0 (``sv_epsilon`` above every singular value, or a zero delta): the factors
    are then empty and the whole delta is the residual."""
    if delta.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {list(delta.shape)}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    rank = kept_rank(s, max_rank, sv_epsilon)
    if distribute_scale:
        root = s[:rank].sqrt()
        a = root[:, None] * vh[:rank]
        b = u[:, :rank] * root[None, :]
    else:
        a = s[:rank, None] * vh[:rank]
        b = u[:, :rank].clone()
    discarded = s[rank:].double()
    return LowRankFactors(a, b, rank, float(s.double().square().sum().sqrt()),
                          float(discarded.square().sum().sqrt()),
                          float(discarded[0]) if discarded.numel() else 0.0)


def relative_change(delta_norm: float, base_norm: float) -> float:
    """||W_ft - W_base||_F / ||W_base||_F: small (typically < 0.1) for a fine-tune of that base, about
    sqrt(2) for two independently initialised models. ``inf`` for a zero base."""
    return delta_norm / base_norm if base_norm > 0 else (0.0 if delta_norm == 0 else math.inf)
