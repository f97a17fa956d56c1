"""Multi-stage specs end to end: the final output equals mergekit-multi's, intermediates do not outlive their use."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_same_tensors, family, load_folder, run_cli

SPEC = """\
name: blend
merge_method: linear
models:
  - model: chat
    parameters: {weight: 0.6}
  - model: math
    parameters: {weight: 0.4}
dtype: bfloat16
---
name: with-code
merge_method: task_arithmetic
base_model: base
models:
  - model: blend
    parameters: {weight: 0.7}
  - model: code
    parameters: {weight: 0.5}
dtype: bfloat16
---
merge_method: slerp
base_model: base
models:
  - model: base
  - model: with-code
parameters:
  t: [0.1, 0.5, 0.9]
dtype: bfloat16
"""


def merge_ok(*args, cwd):
    proc = run_cli(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    family(root)
    (root / "multi.yml").write_text(SPEC)
    return root


@pytest.mark.mergekit
def test_three_stages_equal_mergekit_multi_bit_for_bit(staged):
    ours = staged / "ours"
    merge_ok("merge", str(staged / "multi.yml"), "-o", str(ours), "-q", cwd=staged)
    exe = Path(sys.executable).with_name("mergekit-multi")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(exe), "multi.yml", "-I", str(staged / "mk-intermediate"), "--out-path",
                           str(staged / "theirs"), "--allow-crimes", "--no-write-model-card"], cwd=staged, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_tensors(load_folder(ours), load_folder(staged / "theirs"))
    # Nothing but the final output is left behind.
    assert not [p.name for p in staged.iterdir() if "hubmerge" in p.name]


def test_each_stage_equals_running_it_alone(staged, tmp_path):
    """The same result when the user merges stage by stage with separate single-stage files."""
    first, second, final = SPEC.split("---\n")
    (staged / "s1.yml").write_text(first)
    (staged / "s2.yml").write_text(second.replace("model: blend", f"model: {tmp_path / 'blend'}"))
    (staged / "s3.yml").write_text(final.replace("model: with-code", f"model: {tmp_path / 'with-code'}"))
    for name, out in (("s1.yml", "blend"), ("s2.yml", "with-code"), ("s3.yml", "final")):
        merge_ok("merge", str(staged / name), "-o", str(tmp_path / out), "-q", cwd=staged)
    merge_ok("merge", str(staged / "multi.yml"), "-o", str(tmp_path / "staged"), "-q", cwd=staged)
    assert_same_tensors(load_folder(tmp_path / "staged"), load_folder(tmp_path / "final"))


def test_validate_lists_the_stages_in_order(staged):
    proc = merge_ok("validate", str(staged / "multi.yml"), cwd=staged)
    assert "run in this order: blend -> with-code -> (final)" in proc.stdout
    assert "stage blend: linear of 2 models" in proc.stdout


def test_resume_reuses_finished_intermediates_and_without_it_nothing_is_left(staged, tmp_path):
    spec = staged / "broken.yml"
    # the final stage names a folder that does not exist: stage 'blend' runs, then the final one fails
    first, second, final = SPEC.split("---\n")
    spec.write_text("---\n".join([first, second, final.replace("model: base", "model: missing-model")]))
    out = tmp_path / "out"
    failed = run_cli("merge", str(spec), "-o", str(out), "-q", cwd=staged)
    assert failed.returncode != 0 and "missing-model" in failed.stderr
    assert not out.exists() and not list(tmp_path.iterdir())  # no intermediates without --resume

    failed = run_cli("merge", str(spec), "-o", str(out), "--resume", cwd=staged)
    assert failed.returncode != 0
    scratch = tmp_path / ".out.hubmerge-stages"
    assert sorted(p.name for p in scratch.iterdir()) == ["with-code"]  # 'blend' went once 'with-code' had used it

    spec.write_text(SPEC)
    proc = run_cli("merge", str(spec), "-o", str(out), "--resume", cwd=staged)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("reusing the finished intermediate") == 1 and "stage 1/1: (final)" in proc.stderr
    assert not scratch.exists()
    reference = tmp_path / "reference"
    merge_ok("merge", str(staged / "multi.yml"), "-o", str(reference), "-q", cwd=staged)
    assert_same_tensors(load_folder(out), load_folder(reference))
