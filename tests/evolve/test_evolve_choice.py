"""Categorical choices, ``{choice: [a, b, ...]}``: found wherever a value stands (and as ``merge_method``),
validated against every listed method with errors naming the YAML path, sampled by Optuna's categorical
distribution; every trial's fitness checked against transformers' own perplexity of ``hubmerge merge``'s
output for the same values, and the card and trials table reporting the chosen values."""

from __future__ import annotations

import contextlib
import io

import optuna
import pytest
import yaml
from evolve_support import one_math_thread, reference_ppl

from hubmerge.cli import main
from hubmerge.errors import SpecError
from hubmerge.spec import parse_spec
from hubmerge.spec.model import SearchChoice
from hubmerge.spec.search import find_search_ranges, substitute

SPEC = """\
merge_method: {choice: [task_arithmetic, ties]}
base_model: base
models:
  - model: task_a
    parameters: {weight: {choice: [0.5, 1.0]}}
  - model: task_b
    parameters: {weight: {choice: [0.5, 1.0]}}
dtype: float32
"""
METHOD, WA, WB = "merge_method", "models[0].parameters.weight", "models[1].parameters.weight"


def test_choices_are_found_as_values_and_as_the_merge_method():
    spec = parse_spec(SPEC)
    found = find_search_ranges(spec.raw)
    assert [(p.path, p.parameter, p.range) for p in found] == [
        (METHOD, "merge_method", SearchChoice(("task_arithmetic", "ties"))),
        (WA, "weight", SearchChoice((0.5, 1.0))), (WB, "weight", SearchChoice((0.5, 1.0)))]
    concrete = parse_spec(yaml.safe_dump(substitute(spec.raw, {METHOD: "ties", WA: 1.0, WB: 0.5})))
    assert concrete.merge_method == "ties" and find_search_ranges(concrete.raw) == []
    assert [m.parameters["weight"] for m in concrete.models] == [1.0, 0.5]


@pytest.mark.parametrize("old, new, path, words", [
    # (another listed method's parameter only warns, as mergekit ignores it; a name no method takes is refused)
    ("{weight: {choice: [0.5, 1.0]}}\n  - model: task_b", "{wieght: {choice: [0.5, 1.0]}}\n  - model: task_b",
     "models[0].parameters.wieght", "unknown parameter 'wieght' for merge method 'task_arithmetic'"),
    ("ties]}", "tiess]}", METHOD, "unknown merge method 'tiess'"),
    ("[task_arithmetic, ties]", "[1, ties]", "merge_method.choice", "a merge method must be a name"),
    ("weight: {choice: [0.5, 1.0]}}\n  - model: task_b", "weight: {choice: [0.5, abc]}}\n  - model: task_b", WA,
     "expected a number, got 'abc' (a choice's option)"),
    ("weight: {choice: [0.5, 1.0]}}\n  - model: task_b", "weight: {choice: [0.5, 0.5]}}\n  - model: task_b",
     f"{WA}.choice", "lists 0.5 twice"),
    ("weight: {choice: [0.5, 1.0]}}\n  - model: task_b", "weight: {choice: []}}\n  - model: task_b",
     f"{WA}.choice", "should be non-empty"),
])
def test_bad_choices_name_the_yaml_path(old, new, path, words):
    assert old in SPEC
    with pytest.raises(SpecError) as err:
        parse_spec(SPEC.replace(old, new, 1))
    assert err.value.path == path, str(err.value)
    assert words in str(err.value)


def test_a_spec_with_a_choice_refuses_to_merge(task_models, capsys):
    spec = task_models.root / "choice-merge.yml"
    spec.write_text(SPEC)
    assert main(["merge", str(spec), "-o", str(task_models.root / "never"), "-q"]) == 2
    assert "error: merge_method: is a search range (and 2 more)" in capsys.readouterr().err


def test_search_over_methods_and_weights_scores_each_choice_as_merged(task_models, tmp_path):
    spec = task_models.root / "choice.yml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    with one_math_thread(), contextlib.redirect_stdout(io.StringIO()):
        assert main(["evolve", str(spec), "--eval", "ppl:combined.txt", "--trials", "5", "--sampler", "random",
                     "--seed", "3", "-o", str(out), "--best-spec", str(tmp_path / "best.yml"), "-q"]) == 0
    study = optuna.load_study(study_name="evolve-choice", storage=f"sqlite:///{tmp_path / 'out-study.db'}")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 5
    reference: dict[tuple, float] = {}
    for t in trials:
        values = t.user_attrs["hubmerge"]["values"]
        assert values[METHOD] in ("task_arithmetic", "ties") and {values[WA], values[WB]} <= {0.5, 1.0}
        key = (values[METHOD], values[WA], values[WB])
        if key not in reference:  # hubmerge merge of the concrete spec, scored by transformers alone
            concrete = task_models.root / f"choice-{len(reference)}.yml"
            concrete.write_text(yaml.safe_dump(substitute(parse_spec(SPEC).raw, values)))
            folder = tmp_path / f"merged-{len(reference)}"
            assert main(["merge", str(concrete), "-o", str(folder), "-q"]) == 0
            reference[key] = reference_ppl(folder, task_models.ppl)
        assert t.value == pytest.approx(reference[key], rel=1e-5)
    assert len(reference) >= 2  # the sampler drew more than one combination
    best = min(trials, key=lambda t: t.value)
    assert yaml.safe_load((tmp_path / "best.yml").read_text())["merge_method"] == best.params[METHOD]
    card = (out / "README.md").read_text()
    assert f"| `{METHOD}` | one of task_arithmetic, ties | {best.params[METHOD]} |" in card
    table = (out / "evolve_trials.md").read_text().splitlines()
    assert table[0].startswith(f"| trial | state | {METHOD} | {WA} | {WB} |")
    for t in trials:  # the chosen values of every trial, as sampled
        row = next(r for r in table[2:] if r.startswith(f"| {t.number} "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2:5] == [t.params[METHOD], f"{t.params[WA]:g}", f"{t.params[WB]:g}"]
