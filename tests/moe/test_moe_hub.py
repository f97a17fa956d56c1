"""An MoE recipe through the Hub paths, on the loopback Hub: push (one commit, pinned SHAs, a card naming
every expert), --create-pr, up to date, verify, reproduce, lineage, check and sync after an expert moved."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import load_folder, publish_folder
from moe_models import dense_family
from safetensors.torch import load as load_safetensors

from hubmerge import cli
from hubmerge.hub import Hub
from hubmerge.hub.lineage import lineage_of
from hubmerge.hub.recipes import spec_from_repo
from hubmerge.hub.watch import check
from hubmerge.pipeline.push import push
from hubmerge.pipeline.sync import sync
from hubmerge.pipeline.verify import reproduce, verify
from hubmerge.spec import parse_spec
from hubmerge.spec.frontmatter import split_front_matter


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-hub")
    dense_family(root, "llama", names=("base", "e1", "e2", "e3"), seed=11)
    return root


def _client(hub):
    return Hub(endpoint=hub.url, use_cache=False, retry_backoff=0.01)


@pytest.fixture
def upstream(hub, repo_id_factory, dense):
    ids = {}
    for name in ("base", "e1", "e2"):
        ids[name] = repo_id_factory(namespace="experts")
        hub.create_repo(ids[name], owner="experts")
        publish_folder(hub, ids[name], dense / name)
    return ids


def _recipe(ups, target, gate="cheap_embed"):
    return f"""
base_model: {ups['base']}@{'{sha}'}
gate_mode: {gate}
experts:
  - source_model: {ups['e1']}
    positive_prompts: ["w5 w6 w7"]
  - source_model: {ups['e2']}
    positive_prompts: ["w40 w41"]
    negative_prompts: ["w5"]
dtype: bfloat16
hubmerge: {{target: {target}, license: apache-2.0}}
"""


def _tensors(hub, repo, rev="main"):
    out = {}
    for name, data in hub.files_at(repo, rev).items():
        if name.endswith(".safetensors"):
            out.update(load_safetensors(data))
    return out


def test_push_verify_check_sync(hub, upstream, repo_id_factory, dense, tmp_path):
    target = repo_id_factory()
    base_sha = hub.head(upstream["base"])
    spec = parse_spec(_recipe(upstream, target).replace("{sha}", base_sha))
    result = push(spec, hub=_client(hub), show_progress=False)
    assert result.changed
    commits = hub.list_commits(target)
    assert len(commits) == 2  # the repo's initial commit, then one with everything
    files = hub.files_at(target)
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json", "mergekit_moe_config.yml"} <= set(files)
    meta, body = split_front_matter(files["README.md"].decode())
    assert meta["base_model"] == [upstream["base"], upstream["e1"], upstream["e2"]]
    assert meta["base_model_relation"] == "merge" and "moe" in meta["tags"] and meta["license"] == "apache-2.0"
    recipe = meta["hubmerge"]["recipe"]
    shas = {name: hub.head(repo) for name, repo in upstream.items()}
    assert [e["source_model"] for e in recipe["experts"]] == [f"{upstream['e1']}@{shas['e1']}",
                                                              f"{upstream['e2']}@{shas['e2']}"]
    assert recipe["hubmerge"]["track"] == {upstream["e1"]: "main", upstream["e2"]: "main"}
    assert "## Experts" in body and "“w40 w41”" in body and f"{upstream['e2']}/tree/{shas['e2']}" in body
    config = json.loads(files["config.json"])
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 2

    # The same recipe again: nothing to commit; then as a pull request it leaves main alone.
    again = push(spec, hub=_client(hub), show_progress=False)
    assert not again.changed and len(hub.list_commits(target)) == 2

    check_result = verify(target, hub=_client(hub), show_progress=False)
    assert check_result.ok and check_result.tensors == len(_tensors(hub, target))
    rebuilt, found = reproduce(target, tmp_path / "rebuilt", hub=_client(hub), show_progress=False)
    assert found.kind == "hubmerge" and rebuilt.content_hash == result.content_hash

    lineage = lineage_of(target, hub=_client(hub), depth=1)
    edges = {(lineage.nodes[e.parent].name, e.label) for e in lineage.edges}
    assert edges == {(upstream["e1"], "merge (moe, expert)"), (upstream["e2"], "merge (moe, expert)"),
                     (upstream["base"], "merge (moe, base)")}

    report = check(_client(hub), target)
    assert not report.stale
    new_weights = (dense / "e3" / "model.safetensors").read_bytes()  # e2's repo gets e3's weights
    hub.commit_files(upstream["e2"], {"model.safetensors": new_weights}, message="retrained")
    report = check(_client(hub), target)
    assert report.stale and [s.source for s in report.sources if s.changed] == [upstream["e2"]]
    report, synced = sync(_client(hub), target, show_progress=False)
    assert synced is not None and synced.changed and len(hub.list_commits(target)) == 3
    moe = _tensors(hub, target)
    e3 = load_folder(dense / "e3")
    assert torch.equal(moe["model.layers.1.mlp.experts.down_proj"][1], e3["model.layers.1.mlp.down_proj.weight"])
    assert not check(_client(hub), target).stale


def test_qwen_moe_verify_pull_request_card_recipe(hub, upstream, repo_id_factory,
                                                  tmp_path, capsys):
    """Qwen2-MoE keeps one tensor per expert (as mergekit-moe writes it): verify hashes them as stored."""
    target = repo_id_factory()
    recipe = tmp_path / "moe.yml"
    text = _recipe(upstream, target, gate="random").replace("{sha}", "main") + \
        f"architecture: qwen\nshared_experts:\n  - source_model: {upstream['e2']}\n"
    recipe.write_text(text)
    assert cli.main(["push", str(recipe), "-q", "--endpoint", hub.url]) == 0, capsys.readouterr().err
    files = hub.files_at(target)
    assert json.loads(files["config.json"])["architectures"] == ["Qwen2MoeForCausalLM"]
    assert "model.layers.0.mlp.experts.1.up_proj.weight" in _tensors(hub, target)
    assert verify(target, hub=_client(hub), show_progress=False).ok

    recipe.write_text(text.replace("license: apache-2.0}", "license: apache-2.0, seed: 5}"))
    code = cli.main(["push", str(recipe), "--create-pr", "-q", "--endpoint", hub.url])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "/discussions/" in out and len(hub.list_commits(target)) == 2  # main untouched
    pr = hub.discussions(target)[0]
    pr_tensors = _tensors(hub, target, f"refs/pr/{pr.num}")
    gate = "model.layers.2.mlp.gate.weight"
    assert not torch.equal(pr_tensors[gate], _tensors(hub, target)[gate])  # another seed, other router rows
    spec = spec_from_repo(_client(hub), target)  # push REPO: the recipe comes from the card
    assert spec.merge_method == "moe" and spec.gate_mode == "random" and spec.families == ("qwen2_moe", "qwen3_moe")
    code = cli.main(["push", target, "--part", "1/2", "--pr", "1", "--endpoint", hub.url])
    assert code == 2 and "--open-pr / --part works on merge specs, not on MoE recipes" in capsys.readouterr().err
    doc = yaml.safe_load(files["mergekit_moe_config.yml"])
    assert doc["experts"][1]["negative_prompts"] == ["w5"] and "hubmerge" not in doc
