"""Embedding rows for tokens a model never had (tokenizer transplant, ``hubmerge tokensurgeon``).

Every method returns the new rows for ``targets`` (donor token ids the model lacks), in the model's
embedding space and dtype. Rows of shared tokens are copied elsewhere, never recomputed here.

``omp`` (default; Goddard & Neto 2025, "Training-Free Tokenizer Transplantation via Orthogonal Matching
Pursuit", https://arxiv.org/abs/2506.06607, as in mergekit-tokensurgeon 0.1.5): in the *donor's*
embedding space, write the new token's donor row ``t`` as a sparse combination of the donor rows of
``k`` tokens both vocabularies share, chosen greedily by orthogonal matching pursuit (Pati, Rezaiifar &
Krishnaprasad 1993; Tropp & Gilbert 2007):

    residual = t;  repeat k times: pick the unused shared row d_j maximising |<residual, d_j>|,
                   residual = t - P_S t   (P_S: projection onto the rows picked so far)
    c = argmin_c || t - sum_j c_j d_j ||_2             (least squares on the k picked rows)
    new row = sum_j c_j m_j                            (m_j: the *model's* row of the same shared token)

Works across hidden sizes: the coefficients are found in the donor's space, applied in the model's.
Computed in float32 (float64 inputs stay float64), cast to the model's dtype at the end.

``subword`` (Fast Vocabulary Transfer, Gee et al. 2022, https://aclanthology.org/2022.emnlp-industry.41):
the token's text is split by the model's own tokenizer into pieces p_1..p_n, and the new row is

    mean:           (1/n) sum_i m_{p_i}          sum: sum_i m_{p_i}
    weighted_mean:  sum_i w_i m_{p_i} / sum_i w_i, w = (n, ..., 1) for embeddings, (1, ..., n) for lm_head
    first_last:     m_{p_n} for embeddings, m_{p_1} for lm_head
(zeros when the text has no pieces).

``mean``: the mean of all the model's rows, the same for every new token (Hewitt 2021, "Initializing
New Word Embeddings for Pretrained Language Models", https://nlp.stanford.edu/~johnhew/vocab-expansion.html).
``zero``: zeros.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

METHODS = ("omp", "subword", "mean", "zero")
SUBWORD_METHODS = ("mean", "sum", "weighted_mean", "first_last")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def omp(targets: torch.Tensor, atoms: torch.Tensor, k: int, *, eps: float = 1e-8
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal matching pursuit for a batch: ``targets`` (B, D), ``atoms`` (N, D), ``k`` <= N.

    Returns ``(indices (B, k), coefficients (B, k))`` with ``coefficients[b] @ atoms[indices[b]]`` the
    least-squares approximation of ``targets[b]`` from the ``k`` atoms picked for it (see module docstring).
    The atoms are not normalised: the pick maximises the raw inner product, as mergekit's does."""
    if targets.ndim != 2 or atoms.ndim != 2 or targets.shape[1] != atoms.shape[1]:
        raise ValueError(f"targets {list(targets.shape)} and atoms {list(atoms.shape)} do not match")
    batch, dim = targets.shape
    if not 1 <= k <= atoms.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of atoms ({atoms.shape[0]})")
    work = _work_dtype(targets.dtype)
    t = targets.to(work)
    d = atoms.to(work)
    basis = torch.zeros((batch, dim, k), dtype=work, device=t.device)  # orthonormal basis of the picks
    picked = torch.zeros((batch, k), dtype=torch.long, device=t.device)
    used = torch.zeros((batch, d.shape[0]), dtype=torch.bool, device=t.device)
    rows = torch.arange(batch, device=t.device)
    residual = t.clone()
    for step in range(k):
        score = (residual @ d.T).abs().masked_fill_(used, -float("inf"))
        choice = score.argmax(dim=1)
        picked[:, step] = choice
        used[rows, choice] = True
        v = d[choice]
        q = basis[:, :, :step]
        for _ in range(2):  # Gram-Schmidt twice: orthogonal to working precision ("twice is enough")
            v = v - torch.bmm(q, torch.bmm(q.transpose(1, 2), v.unsqueeze(-1))).squeeze(-1)
        basis[:, :, step] = v / v.norm(dim=1, keepdim=True).clamp_min(eps)
        q = basis[:, :, :step + 1]
        residual = t - torch.bmm(q, torch.bmm(q.transpose(1, 2), t.unsqueeze(-1))).squeeze(-1)
    chosen = d[picked]  # (B, k, D)
    coeffs = torch.linalg.lstsq(chosen.transpose(1, 2), t.unsqueeze(-1)).solution.squeeze(-1)
    return picked, coeffs


def omp_rows(targets: torch.Tensor, donor_shared: torch.Tensor, model_shared: torch.Tensor, k: int, *,
             out_dtype: torch.dtype, batch_bytes: int = 256 << 20) -> torch.Tensor:
    """New model rows for the donor rows ``targets`` (B, D_donor): OMP over ``donor_shared`` (N, D_donor),
    applied to ``model_shared`` (N, D_model), row j of both being the same shared token. Batched so the
    working memory (scores and basis) stays under about ``batch_bytes``."""
    n, dim = donor_shared.shape
    item = 8 if _work_dtype(targets.dtype) == torch.float64 else 4
    per_target = item * (n + dim * (k + 2) + 2 * k * dim)
    step = max(1, batch_bytes // per_target)
    model_work = model_shared.to(_work_dtype(model_shared.dtype))
    out = torch.empty((targets.shape[0], model_shared.shape[1]), dtype=out_dtype, device=targets.device)
    for start in range(0, targets.shape[0], step):
        indices, coeffs = omp(targets[start:start + step], donor_shared, k)
        rows = torch.bmm(coeffs.unsqueeze(1).to(model_work.dtype), model_work[indices]).squeeze(1)
        out[start:start + step] = rows.to(out_dtype)
    return out


def subword_rows(embed: torch.Tensor, pieces: Sequence[Sequence[int]], *, method: str = "mean",
                 is_lm_head: bool = False) -> torch.Tensor:
    """One row per entry of ``pieces`` (the model's token ids the new token's text splits into)."""
    if method not in SUBWORD_METHODS:
        raise ValueError(f"unknown subword method {method!r}; one of {', '.join(SUBWORD_METHODS)}")
    work = _work_dtype(embed.dtype)
    out = torch.zeros((len(pieces), embed.shape[1]), dtype=work, device=embed.device)
    for i, ids in enumerate(pieces):
        if not ids:
            continue
        rows = embed[torch.as_tensor(list(ids), dtype=torch.long, device=embed.device)].to(work)
        if method == "mean":
            out[i] = rows.mean(dim=0)
        elif method == "sum":
            out[i] = rows.sum(dim=0)
        elif method == "weighted_mean":
            w = torch.arange(1, len(ids) + 1, dtype=work, device=embed.device)
            if not is_lm_head:  # the last piece carries the most of a word for the input side
                w = w.flip(0)
            out[i] = (w[:, None] * rows).sum(dim=0) / w.sum()
        else:
            out[i] = rows[0] if is_lm_head else rows[-1]
    return out.to(embed.dtype)


def mean_rows(embed: torch.Tensor, count: int) -> torch.Tensor:
    return embed.to(_work_dtype(embed.dtype)).mean(dim=0).to(embed.dtype).expand(count, -1).clone()


def zero_rows(embed: torch.Tensor, count: int) -> torch.Tensor:
    return torch.zeros((count, embed.shape[1]), dtype=embed.dtype, device=embed.device)


def new_rows(method: str, embed: torch.Tensor, count: int, *, omp_inputs: Callable[[], torch.Tensor] | None = None,
             pieces: Sequence[Sequence[int]] | None = None, subword_method: str = "mean",
             is_lm_head: bool = False) -> torch.Tensor:
    """Dispatch by method name. ``omp_inputs()`` computes the OMP rows (it needs the donor's matrices, which
    only OMP reads); ``pieces`` is what ``subword`` needs."""
    if method == "omp":
        assert omp_inputs is not None
        return omp_inputs()
    if method == "subword":
        assert pieces is not None and len(pieces) == count
        return subword_rows(embed, pieces, method=subword_method, is_lm_head=is_lm_head)
    if method == "mean":
        return mean_rows(embed, count)
    if method == "zero":
        return zero_rows(embed, count)
    raise ValueError(f"unknown approximation method {method!r}; one of {', '.join(METHODS)}")
