"""Fixtures for the evolve tests: the two fine-tunes trained by tasks.py and the combined evaluation files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evolve_support import SEARCH_SPEC, TaskModels, one_math_thread  # noqa: E402
from tasks import make_models, write_evals  # noqa: E402


@pytest.fixture(autouse=True)
def _one_math_thread():
    with one_math_thread():
        yield


@pytest.fixture(scope="session")
def task_models(tmp_path_factory) -> TaskModels:
    root = tmp_path_factory.mktemp("evolve-tasks")
    with one_math_thread():
        models = make_models(root)
    evals = write_evals(root)
    spec = root / "search.yml"
    spec.write_text(SEARCH_SPEC)
    return TaskModels(root, models["base"], models["task_a"], models["task_b"], evals["ppl"], evals["jsonl"], spec)
