"""The GitHub Action (run by act, offline, against the loopback Hub) with an MoE recipe as its `spec`:
the recipe in a Hub repo's README, built and pushed as one commit like any merge."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from actkit import needs_act, read_pairs

pytestmark = [needs_act, pytest.mark.timeout(300)]


def test_action_pushes_an_moe_recipe(hub, upstream, repo_id_factory, run_act, tmp_path, hub_token):
    target = repo_id_factory()
    hub.create_repo(target)
    recipe = {"base_model": upstream["base"], "gate_mode": "cheap_embed", "dtype": "bfloat16",
              "experts": [{"source_model": upstream["chat"], "positive_prompts": ["w5 w6"]},
                          {"source_model": upstream["math"], "positive_prompts": ["w40 w41 w42"]}]}
    hub.commit_files(target, {"README.md": "---\n" + yaml.safe_dump({"hubmerge": {"recipe": recipe}}) + "---\n"})
    result_file = tmp_path / "outputs.txt"
    run = run_act("workflow_dispatch", workflow="tests/action/workflows/local-push.yml",
                  inputs={"spec": target, "python": sys.executable},
                  env={"HUB_TEST_TOKEN": hub_token, "RESULT_FILE": str(result_file)})
    assert run.succeeded, run.tail()
    assert len(hub.list_commits(target)) == 3  # the repo's first commit, the recipe, the MoE
    files = hub.files_at(target)
    assert json.loads(files["config.json"])["architectures"] == ["MixtralForCausalLM"]
    assert sum(f.endswith(".safetensors") for f in files) > 1 and "mergekit_moe_config.yml" in files
    meta = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert "moe" in meta["tags"] and meta["base_model"] == [upstream["base"], upstream["chat"], upstream["math"]]
    outputs = read_pairs(result_file)
    assert outputs["changed"] == "true" and outputs["revision"] == hub.head(target)
    assert f"## hubmerge push: [{target}]" in "\n".join(run.summaries())
