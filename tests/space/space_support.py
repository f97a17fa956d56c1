"""Shared by the Space tests: the signed-in test user, where the Space lives, the recipes merged."""

from __future__ import annotations

from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parents[2] / "space"
ALICE = "alice"
ALICE_TOKEN = "hf_alice_space_test_token_0123456789abcdef"  # a write token of the test Hub's user "alice"


def recipe(parents: dict[str, str], *, method: str = "ties") -> str:
    return f"""merge_method: {method}
base_model: {parents['base']}
models:
  - model: {parents['chat']}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {parents['math']}
    parameters: {{weight: [0.2, 0.8], density: 0.7}}
dtype: bfloat16
"""
