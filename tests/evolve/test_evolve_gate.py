"""``push --gate-eval``: the merge is evaluated before the commit and refused when its perplexity is more
than ``--max-ppl-ratio`` times its best parent's. The ratio is computed here with transformers alone; what
reached the Hub is read from the test server's own commit list."""

from __future__ import annotations

import re

import pytest
from evolve_support import reference_ppl
from helpers import assert_same_tensors, load_folder

from hubmerge.cli import main


@pytest.fixture(scope="module")
def bad_merge(task_models, tmp_path_factory):
    """Task arithmetic with the task vectors badly weighted, merged locally, and its ratio to the best parent."""
    spec = task_models.concrete_spec(2.0, 0.5, "bad.yml")
    folder = tmp_path_factory.mktemp("gate") / "bad"
    assert main(["merge", str(spec), "-o", str(folder), "-q"]) == 0
    parents = [reference_ppl(p, task_models.ppl) for p in (task_models.base, task_models.task_a, task_models.task_b)]
    ratio = reference_ppl(folder, task_models.ppl) / min(parents)
    assert ratio > 1.5
    return spec, folder, ratio


def _push(spec, repo, ppl, max_ratio) -> int:
    return main(["push", str(spec), "--repo", repo, "--gate-eval", f"ppl:{ppl}", "--max-ppl-ratio", str(max_ratio),
                 "-q"])


def test_gate_refuses_a_bad_merge_and_commits_nothing(task_models, bad_merge, hub, repo_id_factory, capsys):
    spec, folder, ratio = bad_merge
    repo = repo_id_factory()
    hub.create_repo(repo)
    commits = hub.list_commits(repo)
    for max_ratio in (1.5, round(ratio * 0.97, 3)):
        assert _push(spec, repo, task_models.ppl, max_ratio) == 2
        err = capsys.readouterr().err
        assert "refusing to push" in err and f"{ratio:.2f}x worse than its best parent" in err
        assert f"--max-ppl-ratio allows {max_ratio:g}x" in err and "nothing was committed" in err
        assert hub.list_commits(repo) == commits
        assert set(hub.files_at(repo)) == {".gitattributes"}
    assert not hub.requests(path=re.escape(repo) + "/(preupload|commit)/", method="POST")  # nothing uploaded

    # Just above the merge's ratio, the same merge goes through: the gate compares that very ratio.
    assert _push(spec, repo, task_models.ppl, round(ratio * 1.03, 3)) == 0
    assert len(hub.list_commits(repo)) == len(commits) + 1
    assert hub.requests(path=re.escape(repo) + "/(preupload|commit)/", method="POST")  # the check above can see
    assert_same_tensors(load_folder(folder), _hub_tensors(hub, repo))


def test_gate_lets_a_good_merge_through(task_models, hub, repo_id_factory, tmp_path):
    spec = task_models.concrete_spec(0.8, 0.8, "good.yml")
    repo = repo_id_factory()
    assert _push(spec, repo, task_models.ppl, 1.5) == 0
    commits = hub.list_commits(repo)
    assert len(commits) == 2 and "model.safetensors" in commits[0]["files"]
    assert main(["merge", str(spec), "-o", str(tmp_path / "good"), "-q"]) == 0
    assert_same_tensors(load_folder(tmp_path / "good"), _hub_tensors(hub, repo))


def test_gate_needs_an_evaluation_with_a_scale(task_models, hub, repo_id_factory, capsys):
    spec = task_models.concrete_spec(0.8, 0.8, "good.yml")
    repo = repo_id_factory()
    assert main(["push", str(spec), "--repo", repo, "--gate-eval", "os:getcwd", "-q"]) == 2
    assert "the gate needs a ppl: or jsonl: evaluation" in capsys.readouterr().err
    assert main(["push", str(spec), "--repo", repo, "--gate-eval", f"ppl:{task_models.ppl}", "--max-ppl-ratio",
                 "0.5", "-q"]) == 2
    assert "--max-ppl-ratio must be at least 1" in capsys.readouterr().err
    assert not hub.requests(path=re.escape(repo))  # refused before touching the Hub


def _hub_tensors(hub, repo):
    from safetensors.torch import load

    return load(hub.files_at(repo)["model.safetensors"])
