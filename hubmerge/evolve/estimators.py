"""Cheap fitness estimates: a fixed, seeded subset of "anchor" items and a confidence interval.

Every evaluation reduces to per-item pairs ``(score, weight)``; the metric is the ratio
``sum(score) / sum(weight)`` (accuracy: score 0/1, weight 1; perplexity: summed token NLL over token
count, then exp). On a random subset of k of the N items that ratio is the classic ratio estimator, whose
standard error (delta method, with the finite-population correction for sampling without replacement) is

    se = sqrt((1 - k/N) / k) * s_d / mean(weight),     d_i = score_i - R * weight_i,

and the interval is R ± t(1-α/2, k-1) · se, mapped through the metric's transform (exp for perplexity).
With weight 1 this is the usual t interval of a mean. With k == N the interval is the point itself.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Estimate:
    """A fitness value, with its confidence interval when it came from per-item scores."""

    value: float
    low: float | None = None
    high: float | None = None
    n: int = 0  # items evaluated
    total: int = 0  # items available
    confidence: float = 0.95

    @property
    def is_subset(self) -> bool:
        return 0 < self.n < self.total

    def describe(self, fmt: str = ".4g") -> str:
        text = format(self.value, fmt)
        items = f"{self.n} of {self.total} items" if self.is_subset else f"{self.n} items"
        if self.low is not None and self.high is not None and self.high > self.low:
            text += f" ({int(round(self.confidence * 100))}% CI {format(self.low, fmt)}–{format(self.high, fmt)}, {items})"
        elif self.n:
            text += f" ({items})"
        return text

    def to_json(self) -> dict:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "n": self.n, "total": self.total,
                "confidence": self.confidence}


def anchor_indices(total: int, k: int | None, seed: int) -> list[int]:
    """A fixed random subset of k item indices (all of them when k is None or >= total), sorted."""
    if k is None or k >= total:
        return list(range(total))
    if k < 2:
        raise ValueError("at least 2 anchor items are needed for an interval")
    return sorted(random.Random(f"hubmerge-anchors:{seed}:{total}").sample(range(total), k))


def ratio_estimate(scores: Sequence[float], weights: Sequence[float], *, total: int | None = None,
                   confidence: float = 0.95, transform: Callable[[float], float] = lambda x: x) -> Estimate:
    """The ratio sum(scores)/sum(weights) and its t interval, as an estimate of the same ratio over ``total``
    items (the population this subset was drawn from without replacement; None: an unbounded population,
    no finite-population correction)."""
    k = len(scores)
    if k == 0 or len(weights) != k:
        raise ValueError("need one weight per score and at least one item")
    wsum = float(sum(weights))
    if wsum <= 0:
        raise ValueError("the items carry no weight (nothing to score)")
    ratio = float(sum(scores)) / wsum
    if k < 2:
        return Estimate(transform(ratio), None, None, k, total or k, confidence)
    wbar = wsum / k
    residuals = [s - ratio * w for s, w in zip(scores, weights)]
    var = sum(r * r for r in residuals) / (k - 1)
    fpc = 1.0 if total is None else max(0.0, (total - k) / total)
    se = math.sqrt(fpc * var / k) / wbar
    half = t_quantile(0.5 + confidence / 2, k - 1) * se
    low, high = transform(ratio - half), transform(ratio + half)
    return Estimate(transform(ratio), min(low, high), max(low, high), k, total or k, confidence)


def mean_estimate(values: Sequence[float], *, confidence: float = 0.95) -> Estimate:
    """The mean of per-item scores (e.g. a user callable's) with its t interval."""
    return ratio_estimate(values, [1.0] * len(values), confidence=confidence)


# ---------------------------------------------------------------------------------------------
# Student's t quantile without scipy: the regularized incomplete beta function (continued fraction)
# gives the CDF; bisection inverts it.

def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (p in (0, 1))."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0
