"""``hubmerge evolve`` end to end on the two test-made fine-tunes: one search (CMA-ES, anchor subsets, a final
full evaluation, ``--push`` to the test Hub), then its results checked against independent computations:
transformers' own perplexity of the parents and of a plain 50/50 linear merge, optuna's storage read
directly, ``hubmerge merge`` of the written spec, and the test Hub's own records."""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy
import optuna
import pytest
import yaml
from evolve_support import WEIGHT_A, WEIGHT_B, one_math_thread, reference_ppl
from helpers import assert_same_tensors, load_folder

from hubmerge.cli import main
from hubmerge.evolve import EvolveError
from hubmerge.evolve.candidate import CandidateMerger
from hubmerge.evolve.search import EvolveOptions, run_search
from hubmerge.spec import load_spec
from hubmerge.spec.search import find_search_ranges

TRIALS, ANCHORS, TOTAL_ITEMS = 20, 24, 56


def _run(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    assert rc == 0, out.getvalue()
    return out.getvalue()


@pytest.fixture(scope="module")
def evolved(task_models, hub_server, tmp_path_factory):
    """One search, pushed: ``evolve search.yml --eval ppl:combined.txt`` (the eval file found beside the spec)."""
    work = tmp_path_factory.mktemp("evolved")
    repo = f"{hub_server.user}/evolved-tiny-{work.name}"
    with one_math_thread():
        stdout = _run(["evolve", str(task_models.spec), "--eval", "ppl:combined.txt", "--trials", str(TRIALS),
                       "--anchors", str(ANCHORS), "--final-top", "3", "--seed", "0", "-o", str(work / "out"),
                       "--push", "--repo", repo, "-q"])
    storage = f"sqlite:///{work / 'out-study.db'}"
    study = optuna.load_study(study_name="evolve-search", storage=storage)
    return SimpleNamespace(out=work / "out", repo=repo, stdout=stdout, study=study, work=work)


def _complete(study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def _best_trial(evolved) -> optuna.trial.FrozenTrial:
    number = int(re.search(r"trial (\d+)", evolved.stdout).group(1))
    return next(t for t in evolved.study.trials if t.number == number)


def _eval_json(folder: Path, *evals: str) -> dict[str, dict]:
    argv = ["eval", str(folder), "--json"]
    for e in evals:
        argv += ["--eval", e]
    return {r["eval"]: r for r in json.loads(_run(argv))["results"]}


def test_search_beats_both_parents_and_a_linear_merge(task_models, evolved):
    ppl = f"ppl:{task_models.ppl}"
    linear = task_models.root / "linear.yml"
    linear.write_text("merge_method: linear\nmodels:\n  - model: task_a\n    parameters: {weight: 0.5}\n"
                      "  - model: task_b\n    parameters: {weight: 0.5}\ndtype: float32\n")
    _run(["merge", str(linear), "-o", str(evolved.work / "linear"), "-q"])
    centre = task_models.concrete_spec(1.25, 1.25, "centre.yml")
    _run(["merge", str(centre), "-o", str(evolved.work / "centre"), "-q"])

    # Baselines from transformers alone, none of them touched by the search.
    baseline = {name: reference_ppl(folder, task_models.ppl) for name, folder in [
        ("task_a", task_models.task_a), ("task_b", task_models.task_b), ("linear 50/50", evolved.work / "linear"),
        ("centre of the ranges", evolved.work / "centre")]}
    found = reference_ppl(evolved.out, task_models.ppl)
    assert all(found < value for value in baseline.values()), (found, baseline)
    assert baseline["centre of the ranges"] > baseline["linear 50/50"]  # a search had to move to win

    # `hubmerge eval` says the same of the merged best, and the search's own final number agrees.
    results = _eval_json(evolved.out, ppl, f"jsonl:{task_models.jsonl}")
    assert results[ppl]["value"] == pytest.approx(found, rel=1e-5)
    assert f"ppl(combined.txt): {results[ppl]['value']:.4g} ({TOTAL_ITEMS} items)" in evolved.stdout
    # ... and on the task items the merge answers both tasks, where each parent answers only its own.
    parents = [_eval_json(p, f"jsonl:{task_models.jsonl}")[f"jsonl:{task_models.jsonl}"]["value"]
               for p in (task_models.task_a, task_models.task_b)]
    assert results[f"jsonl:{task_models.jsonl}"]["value"] > max(parents) + 0.3

    # The study holds the trials the search ran; the winner improved on where the search started.
    complete = _complete(evolved.study)
    assert len(complete) == TRIALS
    assert min(t.value for t in complete) < complete[0].value


def test_subset_estimate_agrees_with_the_full_evaluation(task_models, evolved):
    best = _best_trial(evolved)
    subset = best.user_attrs["hubmerge"]["fitness"][0]
    full = evolved.study.user_attrs[f"hubmerge:full:{best.number}"][0]
    assert (subset["n"], subset["total"]) == (ANCHORS, TOTAL_ITEMS) and full["n"] == TOTAL_ITEMS
    assert subset["value"] == pytest.approx(best.value)
    assert subset["ci_low"] < subset["value"] < subset["ci_high"]
    assert subset["ci_low"] <= full["value"] <= subset["ci_high"], (subset, full)
    assert full["value"] == pytest.approx(reference_ppl(evolved.out, task_models.ppl), rel=1e-5)
    # Every finalist got its full evaluation; the winner is the best of them on all items.
    finalists = {int(k.rsplit(":", 1)[1]): v[0]["value"] for k, v in evolved.study.user_attrs.items()
                 if k.startswith("hubmerge:full:")}
    assert len(finalists) == 3 and min(finalists, key=finalists.get) == best.number


def test_best_spec_is_concrete_and_merges_to_the_best_candidate(task_models, evolved):
    best = _best_trial(evolved)
    values = best.user_attrs["hubmerge"]["values"]
    written = task_models.root / "search.evolved.yml"  # beside the spec, so its relative paths resolve
    assert written.read_text() == (evolved.out / "evolved.yml").read_text()
    spec = load_spec(written)
    assert find_search_ranges(spec.raw) == []
    assert [m["parameters"]["weight"] for m in spec.raw["models"]] == [values[WEIGHT_A], values[WEIGHT_B]]
    assert all(isinstance(v, float) and 0.0 <= v <= 2.5 for v in values.values())

    again = evolved.work / "again"
    _run(["merge", str(written), "-o", str(again), "-q"])
    merged = load_folder(again)
    assert_same_tensors(merged, load_folder(evolved.out))
    # The candidate the search evaluated, merged in memory and streamed, has exactly these tensors.
    search_spec = load_spec(task_models.spec)
    for cache_limit in (1 << 30, 0):
        with CandidateMerger(search_spec, base_dir=task_models.root, cache_limit=cache_limit) as merger:
            _, weights = merger.merged_weights(values)
            assert merger.in_memory is (cache_limit > 0)
        assert_same_tensors(weights, merged)


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGB rows of a non-interlaced 8-bit RGB PNG with unfiltered rows."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">IIBBBBB", body)
            assert size[2:] == (8, 2, 0, 0, 0)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height = size[0], size[1]
    raw = zlib.decompress(idat)
    rows = [raw[y * (width * 3 + 1):(y + 1) * (width * 3 + 1)] for y in range(height)]
    assert all(r[0] == 0 for r in rows)
    return width, height, b"".join(r[1:] for r in rows)


def test_push_puts_the_search_record_in_the_card(task_models, evolved, hub_server):
    commits = hub_server.list_commits(evolved.repo)
    assert len(commits) == 2 and commits[0]["title"].startswith("hubmerge evolve: best of 20 trials (CMA-ES)")
    files = hub_server.files_at(evolved.repo)
    for name in ("model.safetensors", "README.md", "evolved.yml", "evolve_trials.csv", "evolve_trials.md",
                 "evolve_fitness.png"):
        assert name in files, sorted(files)
    assert files["evolved.yml"] == (evolved.out / "evolved.yml").read_bytes()

    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---\n")[1])
    best = _best_trial(evolved)
    search = front["hubmerge"]["search"]
    assert search["best"]["trial"] == best.number and search["best"]["values"] == best.user_attrs["hubmerge"]["values"]
    assert (search["complete"], search["sampler"], search["anchors"]) == (TRIALS, "cmaes", ANCHORS)
    assert "## Parameter search" in card and "![fitness over trials](evolve_fitness.png)" in card
    # The results table: one row per trial, its value as stored by optuna, the best marked.
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d+)(?: \*\*\(best\)\*\*)? \| COMPLETE \|.*$",
                                                               card, re.M)}
    assert sorted(rows) == [t.number for t in _complete(evolved.study)]
    for t in _complete(evolved.study):
        assert f"| {t.value:.6g} |" in rows[t.number]
    assert "**(best)**" in rows[best.number]

    # `hubmerge eval` reads the pushed repo from the Hub and scores it as the local folder.
    ppl = f"ppl:{task_models.ppl}"
    assert _eval_json(evolved.repo, ppl)[ppl]["value"] == pytest.approx(_eval_json(evolved.out, ppl)[ppl]["value"])

    # The plot: one dot per trial, left to right, at a height that follows its value.
    width, height, pixels = _png_pixels(files["evolve_fitness.png"])
    blue = [(i // 3 % width, i // 3 // width) for i in range(0, len(pixels), 3) if pixels[i:i + 3] == bytes((31, 119, 180))]
    columns: list[list[tuple[int, int]]] = []
    for x, y in sorted(blue):
        if columns and x - columns[-1][-1][0] <= 1:
            columns[-1].append((x, y))
        else:
            columns.append([(x, y)])
    assert len(columns) == TRIALS
    heights = [sum(y for _, y in c) / len(c) for c in columns]
    values = [t.value for t in sorted(_complete(evolved.study), key=lambda t: t.number)]
    assert numpy.corrcoef(values, heights)[0, 1] < -0.999  # on a linear axis, larger values higher up (smaller y)


def test_several_objectives_pick_a_pareto_optimal_winner(task_models):
    options = EvolveOptions(evals=[f"ppl:{task_models.ppl}", f"jsonl:{task_models.jsonl}"], trials=6, seed=1,
                            base_dir=task_models.root)
    with one_math_thread():
        result = run_search(load_spec(task_models.spec), options)
    assert (result.sampler, result.directions) == ("tpe", ["minimize", "maximize"])
    points = {t.number: (t.fitness[0].value, t.fitness[1].value) for t in result.complete}
    assert len(points) == 6
    ppl, acc = points[result.best.number]
    assert not any(p <= ppl and a >= acc and (p, a) != (ppl, acc) for p, a in points.values())  # not dominated


def test_failing_candidates_are_recorded_and_stop_the_search(task_models, tmp_path, monkeypatch):
    (tmp_path / "broken_fitness.py").write_text("def score(model, tokenizer):\n    raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    options = EvolveOptions(evals=["broken_fitness:score"], trials=10, storage=storage, study_name="broken",
                            base_dir=task_models.root)
    with pytest.raises(EvolveError, match=r"5 candidates in a row failed; the last: broken_fitness:score raised "
                                          r"RuntimeError: no GPU here"):
        run_search(load_spec(task_models.spec), options)
    trials = optuna.load_study(study_name="broken", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL"] * 5
    assert all("no GPU here" in t.user_attrs["hubmerge"]["error"] for t in trials)
