"""A search killed mid-way (SIGKILL, no cleanup) resumes from its SQLite study: the rerun keeps every trial
the killed run completed, adds only the missing ones, and its winner is chosen among all of them."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time

import optuna
import yaml
from evolve_support import WEIGHT_A, WEIGHT_B

from hubmerge.cli import main

COMPLETE = optuna.trial.TrialState.COMPLETE


def _snapshot(storage: str, study_name: str) -> dict[int, tuple[str, dict, float | None]]:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # not created yet
        return {}
    return {t.number: (t.state.name, t.params, t.value) for t in study.get_trials(deepcopy=False)}


def test_killed_search_resumes_from_its_study(task_models, tmp_path):
    storage, name = f"sqlite:///{tmp_path / 'study.db'}", "resume-me"
    argv = ["evolve", str(task_models.spec), "--eval", f"ppl:{task_models.ppl}", "--storage", storage,
            "--study-name", name, "-o", str(tmp_path / "out"), "--best-spec", str(tmp_path / "best.yml"), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hubmerge.cli", *argv, "--trials", "1000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while sum(s == "COMPLETE" for s, _, _ in _snapshot(storage, name).values()) < 2:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the search completed no trial in time"
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL: no handler runs, the trial in progress is left as it was
        proc.communicate()
    assert proc.returncode == -9

    before = _snapshot(storage, name)
    done_before = {n: t for n, t in before.items() if t[0] == "COMPLETE"}
    assert 2 <= len(done_before) < 1000
    assert not (tmp_path / "out").exists()  # the killed run never got to its outputs

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--trials", str(len(done_before) + 3)]) == 0

    study = optuna.load_study(study_name=name, storage=storage)
    after = {t.number: t for t in study.get_trials()}
    for number, (state, params, value) in done_before.items():  # kept as they were
        assert (after[number].state.name, after[number].params, after[number].value) == (state, params, value)
    new = [t for n, t in after.items() if n not in before]
    assert len([t for t in new if t.state == COMPLETE]) == 3  # only the missing trials were run
    assert min(t.number for t in new) > max(before)
    # A trial the kill interrupted is never counted as complete (a heartbeat fails it after the grace period).
    assert all(after[n].state != COMPLETE for n, t in before.items() if t[0] != "COMPLETE")

    # The winner is the best trial of the whole study, from before and after the kill.
    best = min((t for t in after.values() if t.state == COMPLETE), key=lambda t: t.value)
    assert f"best of {len(done_before) + 3} trials" in out.getvalue()
    assert f"): trial {best.number}\n" in out.getvalue()
    written = yaml.safe_load((tmp_path / "best.yml").read_text())
    assert [m["parameters"]["weight"] for m in written["models"]] == [
        best.user_attrs["hubmerge"]["values"][WEIGHT_A], best.user_attrs["hubmerge"]["values"][WEIGHT_B]]


def test_two_workers_share_one_study(task_models, tmp_path):
    """Optuna's own distributed mode: two processes on one SQLite study split the trials between them and
    stop once the study holds the requested number of complete trials."""
    storage, name = f"sqlite:///{tmp_path / 'shared.db'}", "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "hubmerge.cli", "evolve", str(task_models.spec), "--eval",
                               f"ppl:{task_models.ppl}", "--storage", storage, "--study-name", name, "--trials", "6",
                               "--final-top", "1", "-o", str(tmp_path / f"out{i}"),
                               "--best-spec", str(tmp_path / f"best{i}.yml"), "-q"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name=name, storage=storage)
    complete = [t for t in study.get_trials() if t.state == COMPLETE]
    assert 6 <= len(complete) <= 7  # the last trial may be started by both workers at once
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == len(params)  # the sampler hands each worker different candidates
    by_values = {(t.user_attrs["hubmerge"]["values"][WEIGHT_A], t.user_attrs["hubmerge"]["values"][WEIGHT_B]): t
                 for t in complete}
    best = min(complete, key=lambda t: t.value)
    for i in range(2):  # each worker's winner is a trial of the shared study, chosen from all of them
        written = yaml.safe_load((tmp_path / f"best{i}.yml").read_text())
        chosen = by_values[tuple(m["parameters"]["weight"] for m in written["models"])]
        if len(complete) == 6:  # no trial finished after either worker chose
            assert chosen.number == best.number
