"""Hostile and careless specs through the CLI: refused in one line, exit 2, no traceback, nothing touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import assert_refused, family, run_bounded, tree_state
from test_bounded_parsing import billion_laughs


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile-specs")
    family(root)
    return root


def refuse(root: Path, spec_text: str | bytes, *names: str, command: str = "merge", extra: tuple = ()) -> str:
    spec = root / "hostile.yml"
    spec.write_bytes(spec_text if isinstance(spec_text, bytes) else spec_text.encode())
    before = tree_state(root)
    args = (command, str(spec), *(("-o", str(root / "out")) if command == "merge" else ()), *extra)
    line = assert_refused(run_bounded(*args, cwd=root), *names)
    assert tree_state(root) == before
    assert not (root / "out").exists()
    spec.unlink()
    return line


def test_dev_zero_is_refused_at_once(models):
    before = tree_state(models)
    assert_refused(run_bounded("validate", "/dev/zero", cwd=models), "/dev/zero")
    assert tree_state(models) == before


def test_alias_bomb(models):
    refuse(models, billion_laughs(), "hostile.yml", "aliases expanded")


@pytest.mark.parametrize("field,item", [("models", "  - model: chat\n"),
                                        ("slices", "  - sources: [{model: chat, layer_range: [0, 1]}]\n")])
def test_a_million_models_or_slices_name_the_field(models, field, item):
    refuse(models, f"merge_method: linear\n{field}:\n" + item * 1_000_000, f"{field}: more than 10000 entries",
           command="validate")


def test_huge_bad_value_is_not_echoed_whole(models):
    line = refuse(models, "merge_method: linear\nmodels:\n  - model: chat\n    parameters: {weight: '" + "x" * 3_000_000
                  + "'}\n", "weight")
    assert len(line) < 600
