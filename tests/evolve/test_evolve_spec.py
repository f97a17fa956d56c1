"""Search ranges in specs: where they may stand, errors that name their YAML path, and a spec holding one
that refuses to merge with a pointer to ``hubmerge evolve``."""

from __future__ import annotations

import pytest
from evolve_support import WEIGHT_A

from hubmerge.cli import main
from hubmerge.errors import SpecError
from hubmerge.spec import parse_spec
from hubmerge.spec.parse import spec_from_dict
from hubmerge.spec.search import find_search_ranges, substitute

SPEC = """\
merge_method: ties
base_model: base
models:
  - model: task_a
    parameters:
      weight: [{search: [0.0, 1.0]}, 0.5]
      density: {search: [0.2, 0.9], step: 0.1}
  - model: task_b
    parameters:
      weight: [{filter: mlp, value: {search: [0.01, 1.0], log: true}}, {value: 0.5}]
      density: 0.7
parameters:
  normalize: true
dtype: float32
"""


def test_ranges_are_found_wherever_a_number_may_stand():
    spec = parse_spec(SPEC)
    found = find_search_ranges(spec.raw)
    assert [(p.path, p.parameter) for p in found] == [
        ("models[0].parameters.weight[0]", "weight"),
        ("models[0].parameters.density", "density"),
        ("models[1].parameters.weight[0].value", "weight"),
    ]
    assert (found[1].range.low, found[1].range.high, found[1].range.step) == (0.2, 0.9, 0.1)
    assert found[2].range.log and found[2].range.low == 0.01

    values = {"models[0].parameters.weight[0]": 0.25, "models[0].parameters.density": 0.4,
              "models[1].parameters.weight[0].value": 0.1}
    concrete = spec_from_dict(substitute(spec.raw, values))
    assert find_search_ranges(concrete.raw) == []
    assert concrete.raw["models"][0]["parameters"] == {"weight": [0.25, 0.5], "density": 0.4}
    assert concrete.raw["models"][1]["parameters"]["weight"][0] == {"filter": "mlp", "value": 0.1}
    assert spec.raw["models"][0]["parameters"]["density"] == {"search": [0.2, 0.9], "step": 0.1}  # not mutated

    with pytest.raises(SpecError) as err:
        substitute(spec.raw, {k: v for k, v in values.items() if "density" not in k})
    assert err.value.path == "models[0].parameters.density"
    with pytest.raises(SpecError) as err:
        substitute(spec.raw, {**values, "models[1].parameters.density": 0.3})
    assert err.value.path == "models[1].parameters.density"


@pytest.mark.parametrize("value, path, words", [
    ("{search: [1.0, 0.0]}", "models[0].parameters.density.search", "empty: low must be below high"),
    ("{search: [0.5, 0.5]}", "models[0].parameters.density.search", "empty"),
    ("{search: [0.0, 1.0, 2.0]}", "models[0].parameters.density.search", "too long"),
    ("{search: [0.0, high]}", "models[0].parameters.density.search[1]", "not of type 'number'"),
    ("{search: [0.0, 1.0], stepp: 0.1}", "models[0].parameters.density.stepp", "did you mean 'step'"),
    ("{search: [0.0, 1.0], log: true}", "models[0].parameters.density.search", "positive low bound"),
    ("{search: [0.1, 1.0], step: 2.0}", "models[0].parameters.density.step", "no larger than the range"),
    ("{search: [0.1, 1.0], step: 0.1, log: true}", "models[0].parameters.density.step", "either 'step' or"),
])
def test_bad_range_errors_name_the_yaml_path(value, path, words):
    text = SPEC.replace("density: {search: [0.2, 0.9], step: 0.1}", f"density: {value}")
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert err.value.path == path, str(err.value)
    assert words in str(err.value)


def test_only_numeric_parameters_can_be_searched():
    with pytest.raises(SpecError) as err:
        parse_spec(SPEC.replace("normalize: true", "normalize: {search: [0, 1]}"))
    assert err.value.path == "parameters.normalize"
    assert "only numbers can be searched" in str(err.value)


def test_a_spec_with_ranges_refuses_to_merge_and_points_to_evolve(task_models, capsys):
    out = task_models.root / "never-written"
    assert main(["merge", str(task_models.spec), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"error: {WEIGHT_A}: is a search range (and 1 more)" in err
    assert "hubmerge evolve" in err
    assert not out.exists()
    # With concrete values the same spec merges.
    concrete = task_models.concrete_spec(0.5, 0.5, "concrete.yml")
    assert main(["merge", str(concrete), "-o", str(out), "-q"]) == 0
    assert (out / "model.safetensors").is_file()


def test_validate_plans_a_search_spec_at_the_midpoints_of_its_ranges(task_models, tmp_path, capsys):
    assert main(["validate", str(task_models.spec), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("search spec: planned with every search range at its midpoint")
    import json

    plan = json.loads(out[out.index("{"):])
    weights = {t["name"]: t["params"]["weights"] for t in plan["plan"]}
    assert weights and all(w == [1.25, 1.25] for w in weights.values())  # centre of [0.0, 2.5] for both
    # A range no candidate could satisfy is caught here too, before any search: density above 1.
    bad = tmp_path / "bad.yml"
    bad.write_text(SPEC.replace("density: {search: [0.2, 0.9], step: 0.1}", "density: {search: [2.0, 3.0]}"))
    assert main(["validate", str(bad)]) == 2


def test_midpoints_follow_step_and_log():
    from hubmerge.spec.model import SearchRange
    from hubmerge.spec.search import midpoint

    assert midpoint(SearchRange(0.2, 0.95, step=0.1)) == pytest.approx(0.6)  # 0.575 rounded onto the 0.1 grid from 0.2
    assert midpoint(SearchRange(0.01, 1.0, log=True)) == pytest.approx(0.1)
    assert midpoint(SearchRange(0.0, 2.5)) == 1.25
