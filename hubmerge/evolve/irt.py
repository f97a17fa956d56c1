"""Item response theory (IRT) fitness estimators: a model's accuracy on every item from its answers on a few.

The two-parameter logistic model (2PL; Birnbaum 1968, in Lord & Novick, *Statistical Theories of Mental
Test Scores*) says model i answers item j correctly with probability

    P(Y_ij = 1) = σ(a_j (θ_i − b_j)),      σ(z) = 1 / (1 + e^−z),

with θ_i the model's ability, b_j the item's difficulty and a_j > 0 its discrimination. ``fit_2pl`` fits all
three by maximum a posteriori on a 0/1 response matrix (the parents and every fully evaluated candidate,
on the user's own items: no pre-fitted tables), with priors θ ~ N(0, 1) (which fixes the scale),
b ~ N(0, 2²) and log a ~ N(0, 0.5²), by Adam on the negative log posterior (its gradient written out).

A new candidate answers only the K anchor items A of the N. After tinyBenchmarks (Polo, Weber, Choshen,
Sun, Xu, Yurochkin: "tinyBenchmarks: evaluating LLMs with fewer examples", ICML 2024):

- its ability θ̂ maximises Σ_{j∈A} log P(y_j | θ, a_j, b_j) − θ²/2 (Newton's method, one dimension);
- **p-IRT** (``irt``): the anchors' observed answers plus the predicted probabilities of the unseen items,

      Ẑ_p = (1/N) [ Σ_{j∈A} y_j + Σ_{j∉A} σ(a_j (θ̂ − b_j)) ]  = λ ȳ_A + (1 − λ) p̂_unseen,  λ = K/N,

  with variance (1/N²) Σ_{j∉A} p̂_j (1 − p̂_j) (the unseen answers) + (∂Ẑ_p/∂θ)² / I(θ̂) (the ability's
  uncertainty, I the posterior's curvature);
- **gp-IRT** (``gpirt``): Ẑ_gp = λ_gp ȳ_A + (1 − λ_gp) Ẑ_p with λ_gp = β² / (β² + v) — the anchor mean's
  variance v = ȳ(1 − ȳ)/K · (1 − K/N) against β², the mean squared error of p-IRT measured on the fully
  evaluated models from their own anchor answers (as tinyBenchmarks' heuristic weight): many anchors or a
  poorly fitting IRT model lean on the mean, few anchors on the IRT prediction.

Intervals are normal, clipped to [0, 1].
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch

THETA_SD, B_SD, LOG_A_SD = 1.0, 2.0, 0.5


@dataclass(frozen=True)
class IrtModel:
    a: torch.Tensor  # (N,) discriminations
    b: torch.Tensor  # (N,) difficulties
    theta: torch.Tensor  # (M,) abilities of the models it was fitted on

    @property
    def items(self) -> int:
        return int(self.a.shape[0])

    def probabilities(self, theta: float) -> torch.Tensor:
        return torch.sigmoid(self.a * (theta - self.b))


def fit_2pl(responses: Sequence[Sequence[float]] | torch.Tensor, *, steps: int = 400, lr: float = 0.05,
            seed: int = 0) -> IrtModel:
    """The 2PL model's MAP fit to a (models × items) matrix of 0/1 answers (NaN: not observed)."""
    y = torch.as_tensor(responses, dtype=torch.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 1:
        raise ValueError("need a (models × items) matrix with at least two models")
    observed = ~torch.isnan(y)
    y = torch.nan_to_num(y)
    models, items = y.shape
    gen = torch.Generator().manual_seed(seed)
    # Start from the data: abilities from each model's accuracy, difficulties from each item's.
    acc = (y * observed).sum(1) / observed.sum(1).clamp(min=1)
    easy = (y * observed).sum(0) / observed.sum(0).clamp(min=1)
    theta = torch.logit(acc.clamp(0.05, 0.95))
    b = -torch.logit(easy.clamp(0.05, 0.95)) + 0.01 * torch.randn(items, generator=gen, dtype=torch.float64)
    log_a = torch.zeros(items, dtype=torch.float64)
    w = observed.double()
    # Adam on the negative log posterior, with its gradient written out (r = residuals y − p on observed):
    #   ∂/∂θ_i = −Σ_j r_ij a_j + θ_i/σ_θ²,  ∂/∂b_j = Σ_i r_ij a_j + b_j/σ_b²,
    #   ∂/∂log a_j = −Σ_i r_ij a_j (θ_i − b_j) + log a_j/σ_loga².
    params = [theta, b, log_a]
    m1 = [torch.zeros_like(x) for x in params]
    m2 = [torch.zeros_like(x) for x in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        a = log_a.exp()
        diff = theta[:, None] - b[None, :]
        r = (y - torch.sigmoid(a * diff)) * w
        ra = r * a
        grads = [-ra.sum(1) + theta / THETA_SD**2, ra.sum(0) + b / B_SD**2,
                 -(ra * diff).sum(0) + log_a / LOG_A_SD**2]
        for x, g, s1, s2 in zip(params, grads, m1, m2):
            s1.mul_(beta1).add_(g, alpha=1 - beta1)
            s2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            x.sub_(lr * (s1 / (1 - beta1**t)) / ((s2 / (1 - beta2**t)).sqrt() + eps))
    return IrtModel(log_a.exp(), b, theta)


def fit_ability(model: IrtModel, anchors: Sequence[int], answers: Sequence[float]) -> tuple[float, float]:
    """(θ̂, its posterior variance 1/I(θ̂)): the MAP ability from answers to the anchor items (prior N(0, 1))."""
    idx = torch.as_tensor(list(anchors), dtype=torch.long)
    y = torch.as_tensor(list(answers), dtype=torch.float64)
    a, b = model.a[idx], model.b[idx]
    theta = 0.0
    for _ in range(50):
        p = torch.sigmoid(a * (theta - b))
        grad = float((a * (y - p)).sum()) - theta / THETA_SD**2
        info = float((a * a * p * (1 - p)).sum()) + 1 / THETA_SD**2
        step = grad / info
        theta += max(-2.0, min(2.0, step))
        if abs(step) < 1e-9:
            break
    p = torch.sigmoid(a * (theta - b))
    return theta, 1.0 / (float((a * a * p * (1 - p)).sum()) + 1 / THETA_SD**2)


@dataclass(frozen=True)
class IrtEstimate:
    value: float
    low: float
    high: float
    anchor_mean: float


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def p_irt(model: IrtModel, anchors: Sequence[int], answers: Sequence[float], *,
          confidence: float = 0.95) -> tuple[float, float]:
    """(Ẑ_p, its variance): observed anchors plus predicted unseen items, over all N items."""
    n = model.items
    theta, theta_var = fit_ability(model, anchors, answers)
    p = model.probabilities(theta)
    unseen = torch.ones(n, dtype=torch.bool)
    unseen[torch.as_tensor(list(anchors), dtype=torch.long)] = False
    pu = p[unseen]
    value = (float(sum(answers)) + float(pu.sum())) / n
    slope = float((model.a[unseen] * pu * (1 - pu)).sum()) / n
    var = float((pu * (1 - pu)).sum()) / n**2 + slope**2 * theta_var
    return value, var


def anchor_mean_variance(mean: float, k: int, n: int) -> float:
    return max(mean * (1 - mean), 1.0 / (4 * k)) / k * max(0.0, 1 - k / n)  # floored: 0/K still has a spread


def pirt_squared_error(model: IrtModel, anchors: Sequence[int], full: Sequence[Sequence[float]]) -> float:
    """β²: the mean squared error of p-IRT over fully evaluated models (each from its own anchor answers)."""
    errors = []
    for row in full:
        est, _ = p_irt(model, anchors, [row[j] for j in anchors])
        errors.append((est - sum(row) / len(row)) ** 2)
    return sum(errors) / len(errors) if errors else 0.0


def estimate(model: IrtModel, anchors: Sequence[int], answers: Sequence[float], *, kind: str = "irt",
             beta2: float = 0.0, confidence: float = 0.95) -> IrtEstimate:
    """The p-IRT (``irt``) or gp-IRT (``gpirt``) estimate of the accuracy over all items, with an interval."""
    k, n = len(anchors), model.items
    mean = float(sum(answers)) / k
    value, var = p_irt(model, anchors, answers, confidence=confidence)
    if kind == "gpirt":
        v = anchor_mean_variance(mean, k, n)
        lam = beta2 / (beta2 + v) if beta2 + v > 0 else 0.0
        value = lam * mean + (1 - lam) * value
        var = lam**2 * v + (1 - lam) ** 2 * var
    elif kind != "irt":
        raise ValueError(f"unknown IRT estimator {kind!r}")
    half = _z(confidence) * math.sqrt(max(var, 0.0))
    return IrtEstimate(value, max(0.0, value - half), min(1.0, value + half), mean)


def stratified_anchors(model: IrtModel, k: int, seed: int) -> list[int]:
    """k anchors, one drawn (seeded) from each of k equal strata of items sorted by fitted difficulty."""
    n = model.items
    if k >= n:
        return list(range(n))
    order = sorted(range(n), key=lambda j: (float(model.b[j]), j))
    rng = random.Random(f"hubmerge-stratified:{seed}:{n}")
    out = []
    for s in range(k):
        lo, hi = (s * n) // k, ((s + 1) * n) // k
        out.append(order[rng.randrange(lo, hi)])
    return sorted(out)
