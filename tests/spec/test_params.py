"""Parameter resolution against hand-computed expectations (mergekit's semantics)."""

from __future__ import annotations

import pytest

from hubmerge.spec.model import Conditional
from hubmerge.spec.params import evaluate, resolve


def test_numeric_gradient_interpolates_piecewise_linearly():
    g = (0.0, 1.0, 0.5)
    # t*(n-1) = 2t: t=0.25 -> halfway between 0 and 1; t=0.75 -> halfway between 1 and 0.5
    assert evaluate(g, tensor_name="x", t=0.25, kind=float) == pytest.approx(0.5)
    assert evaluate(g, tensor_name="x", t=0.75, kind=float) == pytest.approx(0.75)
    assert evaluate(g, tensor_name="x", t=1.0, kind=float) == 0.5
    assert evaluate(g, tensor_name="x", t=0.0, kind=float) == 0.0


def test_bool_gradient_picks_steps():
    g = (True, False, True)
    assert [evaluate(g, tensor_name="x", t=t, kind=bool) for t in (0, 0.49, 0.5, 0.99, 1)] == \
        [True, True, False, False, True]


def test_filters_first_match_wins_and_star():
    setting = (Conditional(0.1, "self_attn"), Conditional(0.2, "mlp"), Conditional(0.3, "*"))
    assert evaluate(setting, tensor_name="model.layers.0.self_attn.q_proj.weight", t=0, kind=float) == 0.1
    assert evaluate(setting, tensor_name="model.layers.0.mlp.up_proj.weight", t=0, kind=float) == 0.2
    assert evaluate(setting, tensor_name="model.norm.weight", t=0, kind=float) == 0.3


def test_unmatched_filter_falls_through_levels():
    model_level = {"weight": (Conditional(0.9, "mlp"),)}
    top_level = {"weight": 0.4}
    assert resolve("weight", [model_level, None, top_level], tensor_name="a.mlp.b", t=0, kind=float) == 0.9
    assert resolve("weight", [model_level, None, top_level], tensor_name="a.attn.b", t=0, kind=float) == 0.4
    assert resolve("density", [model_level, top_level], tensor_name="a", t=0, kind=float) is None


def test_filtered_gradient():
    setting = (Conditional((0.0, 1.0), "attn"), Conditional(0.5))
    assert evaluate(setting, tensor_name="x.attn.y", t=0.3, kind=float) == pytest.approx(0.3)
    assert evaluate(setting, tensor_name="x.mlp.y", t=0.3, kind=float) == 0.5
