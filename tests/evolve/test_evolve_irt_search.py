"""``hubmerge evolve --estimator irt|gpirt`` on the test-made fine-tunes: the parents and the warm-up
candidates evaluated on every item, later candidates estimated from anchors by the 2PL model, and the
finalists' full evaluations checked against transformers' own greedy next tokens; bad options in one line."""

from __future__ import annotations

import contextlib
import io
import json

import optuna
import pytest
import torch
from evolve_support import encode, load_reference, one_math_thread

from hubmerge.cli import main
from hubmerge.evolve.fitness import PARENTS_ATTR


def _greedy_accuracy_rows(folder, jsonl) -> str:
    model, tok = load_reference(folder)
    out = ""
    with torch.inference_mode():
        for line in jsonl.read_text().splitlines():
            it = json.loads(line)
            want = tok(" " + it["answer"], add_special_tokens=False)["input_ids"][0]
            out += "1" if int(model(input_ids=encode(tok, it["prompt"])).logits[0, -1].argmax()) == want else "0"
    return out


@pytest.mark.parametrize("estimator, selection", [("irt", "stratified"), ("gpirt", "random")])
def test_irt_search_estimates_from_anchors(task_models, tmp_path, estimator, selection):
    out = tmp_path / "out"
    argv = ["evolve", str(task_models.spec), "--eval", "jsonl:combined.jsonl", "--trials", "6", "--anchors", "12",
            "--estimator", estimator, "--anchor-selection", selection, "--irt-warmup", "2", "--final-top", "2",
            "--sampler", "random", "-o", str(out), "--best-spec", str(tmp_path / "best.yml"), "-q"]
    with one_math_thread(), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    study = optuna.load_study(study_name="evolve-search", storage=f"sqlite:///{tmp_path / 'out-study.db'}")
    parents = study.user_attrs[PARENTS_ATTR]["0"]
    assert parents == [_greedy_accuracy_rows(m, task_models.jsonl)
                       for m in (task_models.base, task_models.task_a, task_models.task_b)]
    trials = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)
    assert len(trials) == 6
    for t in trials[:2]:  # warm-up: every item, the value is the plain accuracy of its rows
        rows = t.user_attrs["hubmerge"]["responses"]["0"]
        assert len(rows) == 56 and t.value == pytest.approx(rows.count("1") / 56)
    for t in trials[2:]:
        fit = t.user_attrs["hubmerge"]["fitness"][0]
        assert "responses" not in t.user_attrs["hubmerge"] and (fit["n"], fit["total"]) == (12, 56)
        assert 0.0 <= fit["ci_low"] <= fit["value"] <= fit["ci_high"] <= 1.0
    card = (out / "README.md").read_text()
    assert "Estimated vs full" in card


@pytest.mark.parametrize("extra, words", [
    (["--estimator", "irt"], "--estimator irt needs --anchors K"),
    (["--estimator", "irt", "--anchors", "80"], "--anchors 80: acc(combined.jsonl) has only 56 items"),
    (["--estimator", "gpirt", "--anchors", "10", "--eval", "ppl:combined.txt"], None),
])
def test_irt_option_errors(task_models, tmp_path, capsys, extra, words):
    if words is None:  # a ppl evaluation alone cannot use IRT
        extra = ["--estimator", "gpirt", "--anchors", "10"]
        evals = ["--eval", "ppl:combined.txt"]
        words = "--estimator gpirt needs a jsonl: evaluation"
    else:
        evals = ["--eval", "jsonl:combined.jsonl"]
    assert main(["evolve", str(task_models.spec), *evals, "--trials", "2", *extra, "-o", str(tmp_path / "o"),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err


def test_irt_needs_two_parents(task_models, tmp_path, capsys):
    spec = task_models.root / "one-parent.yml"
    spec.write_text("merge_method: linear\nmodels:\n  - model: task_a\n    parameters: {weight: {search: [0.5, 1.0]}}\n"
                    "dtype: float32\n")
    assert main(["evolve", str(spec), "--eval", "jsonl:combined.jsonl", "--trials", "2", "--anchors", "10",
                 "--estimator", "irt", "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "--estimator irt needs at least 2 parents" in capsys.readouterr().err
