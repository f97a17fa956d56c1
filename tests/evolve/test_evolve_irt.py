"""The 2PL IRT fit and the p-IRT / gp-IRT estimators against a synthetic ground truth: responses simulated
from known abilities, difficulties and discriminations; the fit must recover them (rank correlation, scipy),
and the estimates from anchors must beat the plain anchor mean at the same K."""

from __future__ import annotations

import random
import statistics

import pytest
import scipy.stats
import torch

from hubmerge.evolve.irt import estimate, fit_2pl, pirt_squared_error, stratified_anchors

MODELS, TRAIN, ITEMS = 40, 30, 300


@pytest.fixture(scope="module")
def simulated():
    g = torch.Generator().manual_seed(0)
    a = torch.exp(0.3 + 0.3 * torch.randn(ITEMS, generator=g, dtype=torch.float64))
    b = 1.2 * torch.randn(ITEMS, generator=g, dtype=torch.float64)
    theta = torch.randn(MODELS, generator=g, dtype=torch.float64)
    p = torch.sigmoid(a * (theta[:, None] - b))  # the 2PL model, written out here
    y = (torch.rand(MODELS, ITEMS, generator=g, dtype=torch.float64) < p).double()
    return a, b, theta, y, fit_2pl(y[:TRAIN])


def test_fit_recovers_the_simulated_parameters(simulated):
    a, b, theta, _, model = simulated
    assert scipy.stats.spearmanr(model.b, b).statistic > 0.9
    assert scipy.stats.spearmanr(model.theta, theta[:TRAIN]).statistic > 0.95
    assert scipy.stats.spearmanr(model.a, a).statistic > 0.4  # weakly identified by 30 models, but found
    assert bool((model.a > 0).all())


@pytest.mark.parametrize("k", [10, 20, 40])
def test_irt_estimates_beat_the_anchor_mean(simulated, k):
    _, _, _, y, model = simulated
    errors: dict[str, list[float]] = {"mean": [], "irt": [], "gpirt": []}
    covered = 0
    for rep in range(5):
        anchors = sorted(random.Random(rep).sample(range(ITEMS), k))
        beta2 = pirt_squared_error(model, anchors, y[:TRAIN].tolist())
        for i in range(TRAIN, MODELS):  # models the fit never saw
            answers = [float(y[i, j]) for j in anchors]
            full = float(y[i].mean())
            irt = estimate(model, anchors, answers, kind="irt")
            gp = estimate(model, anchors, answers, kind="gpirt", beta2=beta2)
            assert irt.anchor_mean == pytest.approx(sum(answers) / k)
            errors["mean"].append(abs(irt.anchor_mean - full))
            errors["irt"].append(abs(irt.value - full))
            errors["gpirt"].append(abs(gp.value - full))
            covered += irt.low <= full <= irt.high
    mae = {name: statistics.mean(e) for name, e in errors.items()}
    assert mae["irt"] <= 0.8 * mae["mean"], mae
    assert mae["gpirt"] < mae["mean"], mae
    assert covered >= 0.85 * 5 * (MODELS - TRAIN)  # a 95% interval covers the truth most of the time


def test_gpirt_leans_on_the_mean_when_irt_fits_badly(simulated):
    _, _, _, y, model = simulated
    anchors = list(range(0, ITEMS, 10))
    answers = [float(y[35, j]) for j in anchors]
    mean = sum(answers) / len(answers)
    assert estimate(model, anchors, answers, kind="gpirt", beta2=1.0).value == pytest.approx(mean, abs=1e-3)
    assert estimate(model, anchors, answers, kind="gpirt", beta2=0.0).value == pytest.approx(
        estimate(model, anchors, answers, kind="irt").value)


def test_stratified_anchors_span_the_difficulties(simulated):
    model = simulated[4]
    anchors = stratified_anchors(model, 10, seed=1)
    assert len(set(anchors)) == 10 and anchors == stratified_anchors(model, 10, seed=1)
    ranks = sorted(range(ITEMS), key=lambda j: float(model.b[j]))
    strata = sorted(ranks.index(j) * 10 // ITEMS for j in anchors)
    assert strata == list(range(10))  # one per decile of fitted difficulty
