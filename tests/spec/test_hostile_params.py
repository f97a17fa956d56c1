"""Careless parameters and model references: refused when the spec is read, in one line naming the path."""

from __future__ import annotations

import logging

import pytest
from helpers import assert_refused, family, run_bounded, tree_state

from hubmerge.errors import SpecError
from hubmerge.spec import parse_spec


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "[0.1, .nan]"])
def test_non_finite_weights_are_refused_naming_the_path(value):
    with pytest.raises(SpecError) as err:
        parse_spec(f"merge_method: linear\nmodels:\n  - model: a\n    parameters: {{weight: 1}}\n"
                   f"  - model: b\n    parameters: {{weight: {value}}}\n", source="s.yml")
    assert "models[1].parameters.weight" in err.value.message and "not a finite number" in err.value.message


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", ".nan"])
def test_density_outside_its_range_is_refused(value):
    with pytest.raises(SpecError, match=r"models\[0\]\.parameters\.density"):
        parse_spec(f"merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n"
                   f"    parameters: {{weight: 1, density: {value}}}\n")


def test_slerp_t_outside_0_1_extrapolates_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        parse_spec("merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\nparameters: {t: 2}\n")
    assert "outside [0, 1]" in caplog.text
    for bad in (".nan", ".inf"):
        with pytest.raises(SpecError, match="parameters.t"):
            parse_spec(f"merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\nparameters: {{t: {bad}}}\n")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-params")
    family(root)
    return root


@pytest.mark.parametrize("model,names", [("/", ("no config.json",)), ('"~"', ("no config.json",)),
                                         ("org/..", ("org/..", "not a valid Hub repo id")),
                                         ("base/sub/../x", ("base/sub/../x",))])
def test_model_paths_are_looked_at_not_searched(models, model, names):
    (models / "p.yml").write_text(f"merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: 1}}\n")
    before = tree_state(models)
    assert_refused(run_bounded("merge", "p.yml", "-o", "out", cwd=models, env={"HF_HUB_OFFLINE": "1"}), *names)
    assert tree_state(models) == before and not (models / "out").exists()


def test_a_bad_device_is_one_line(models):
    (models / "ok.yml").write_text("merge_method: linear\nmodels:\n  - model: chat\n    parameters: {weight: 1}\n")
    assert_refused(run_bounded("merge", "ok.yml", "-o", "out", "--device", "banana", cwd=models), "--device", "banana")
    assert not (models / "out").exists()
