"""Output folders that must not be written: refused in one line before anything is touched.

Each case runs the CLI in a subprocess (bounded) inside a folder holding the spec and its inputs, and compares
the bytes of everything there (inputs, spec, neighbours) before and after."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest
from helpers import assert_refused, family, run_bounded, tree_state

SPEC = """
merge_method: linear
models:
  - model: inputs/chat
    parameters: {weight: 0.5}
  - model: inputs/math
    parameters: {weight: 0.5}
dtype: bfloat16
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile-outputs")
    family(root / "inputs")
    (root / "demo.yml").write_text(SPEC)
    return root


@pytest.fixture
def work(template, tmp_path) -> Path:
    root = tmp_path / "work"
    shutil.copytree(template, root, symlinks=True)
    return root


def refused(root: Path, *args: str, names: tuple[str, ...] = (), watch: tuple[Path, ...] = ()) -> str:
    before = tree_state(root, *watch)
    line = assert_refused(run_bounded("merge", *args, "-q", cwd=root), *names)
    assert tree_state(root, *watch) == before
    assert not [p for p in root.parent.iterdir() if "hubmerge" in p.name]  # no partial, lock or scratch left
    return line


def test_the_current_folder_is_never_replaced(work):
    refused(work, "demo.yml", "-o", ".", "--overwrite", names=("current folder",))
    refused(work / "inputs", "../demo.yml", "-o", "..", "--overwrite", names=("current folder",))


def test_an_input_is_never_written(work):
    refused(work, "demo.yml", "-o", "inputs/chat", "--overwrite", names=("inputs/chat", "reads"))
    refused(work, "demo.yml", "-o", "inputs/chat/merged", names=("lies inside",))
    refused(work, "demo.yml", "-o", "inputs", "--overwrite", names=("holds",))


def test_a_folder_holding_the_spec_is_never_replaced(work, tmp_path):
    (work / "sub").mkdir()
    shutil.move(work / "demo.yml", work / "sub" / "demo.yml")
    (work / "sub" / "demo.yml").write_text(SPEC.replace("inputs/", "../inputs/"))
    (tmp_path / "elsewhere").mkdir()
    refused(tmp_path / "elsewhere", str(work / "sub" / "demo.yml"), "-o", str(work / "sub"), "--overwrite",
            names=("demo.yml",), watch=(work,))


def test_a_link_is_not_written_through(work, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    os.symlink(target, work / "link")
    refused(work, "demo.yml", "-o", "link", "--overwrite", names=("symbolic link",), watch=(target,))


def test_overwrite_only_replaces_a_hubmerge_output(work):
    (work / "notes").mkdir()
    (work / "notes" / "todo.txt").write_text("x")
    refused(work, "demo.yml", "-o", "notes", "--overwrite", names=("not a hubmerge output",))
    ok = run_bounded("merge", "demo.yml", "-o", "merged", "-q", cwd=work)
    assert ok.returncode == 0, ok.stderr
    assert (work / "merged" / ".hubmerge-output").is_file()
    again = run_bounded("merge", "demo.yml", "-o", "merged", "--overwrite", "-q", cwd=work)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("out", ["/proc/self/x", "/dev/null", "/"])
def test_system_places_are_refused(work, out):
    refused(work, "demo.yml", "-o", out, names=(out,))


def test_a_second_run_into_the_same_output_is_refused(work):
    lock = work / ".merged.hubmerge-lock"  # as a running merge holds it
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = tree_state(work)
        assert_refused(run_bounded("merge", "demo.yml", "-o", "merged", "-q", cwd=work), "another hubmerge run")
        assert tree_state(work) == before
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["/abs/folder", "../../x", "a/b", "..", ".hidden", "x" * 200, "a b"])
def test_stage_names_are_plain_names(work, name):
    text = f"name: {name!r}\n" + SPEC + "---\nmerge_method: linear\nmodels:\n  - model: " + \
        f"{name!r}\n    parameters: {{weight: 1.0}}\n  - model: inputs/chat\n    parameters: {{weight: 0.0}}\n"
    (work / "multi.yml").write_text(text)
    refused(work, "multi.yml", "-o", "merged", names=("stage name", "not a plain name"))
