"""A merge split across machines: balanced parts, parallel processes, one pull request, finalize."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_same_tensors, family, load_folder, publish_family, publish_folder, run_cli
from safetensors.torch import load as load_safetensors

from hubmerge.errors import HubError
from hubmerge.hub import Hub
from hubmerge.output.shards import Shard, ShardEntry
from hubmerge.pipeline.parts import finalize, open_pr, partition, push_part
from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec import parse_spec

SHARD = 40_000


@pytest.fixture(scope="module")
def local_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam")
    family(root)
    return root


@pytest.fixture
def setup(hub, repo_id_factory, local_family, tmp_path):
    ups = publish_family(hub, repo_id_factory, local_family)
    target = repo_id_factory()
    text = f"""
merge_method: ties
base_model: {ups['base']}
models:
  - model: {ups['chat']}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {ups['math']}
    parameters: {{weight: 0.5, density: 0.7}}
dtype: bfloat16
hubmerge: {{target: {target}, max_shard_size: {SHARD}}}
"""
    spec_path = tmp_path / "spec.yml"
    spec_path.write_text(text)
    return target, ups, spec_path, parse_spec(text)


def _client(hub):
    return Hub(endpoint=hub.url, use_cache=False, retry_backoff=0.01)


def test_partition_is_balanced_and_deterministic():
    shards = [Shard(f"s{i}", [ShardEntry(f"t{i}", "F32", (n,))]) for i, n in enumerate([90, 10, 40, 40, 30, 80, 5])]
    parts = partition(shards, 3)
    assert sorted(s.filename for p in parts for s in p) == sorted(s.filename for s in shards)
    loads = [sum(s.data_bytes for s in p) for p in parts]
    assert max(loads) - min(loads) <= max(s.data_bytes for s in shards)
    assert [[s.filename for s in p] for p in parts] == [[s.filename for s in p] for p in partition(shards, 3)]


def test_plan_parts_cli(hub, setup):
    target, ups, spec_path, spec = setup
    proc = run_cli("plan", str(spec_path), "--parts", "3", "--json", env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    names = [s for p in doc["parts"] for s in p["shards"]]
    assert len(names) == len(set(names)) == doc["shards"] > 3
    assert sum(p["bytes"] for p in doc["parts"]) == doc["output_bytes"]


def test_three_parallel_parts_equal_single_machine_merge(hub, setup, local_family, tmp_path):
    target, ups, spec_path, spec = setup
    env = {**os.environ, "HF_ENDPOINT": hub.url}
    opened = run_cli("push", str(spec_path), "--open-pr", "-q", env={"HF_ENDPOINT": hub.url})
    assert opened.returncode == 0, opened.stderr
    number = int(opened.stdout.strip())
    main_before = hub.head(target)
    procs = [subprocess.Popen([sys.executable, "-m", "hubmerge.cli", "push", str(spec_path), "--part", f"{i}/3",
                               "--pr", str(number), "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in (1, 2, 3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert hub.head(target) == main_before  # parts never touch main

    # a re-run of a part changes nothing
    pr_head = hub.head(target, f"refs/pr/{number}")
    rerun = run_cli("push", str(spec_path), "--part", "2/3", "--pr", str(number), "-q", env={"HF_ENDPOINT": hub.url})
    assert rerun.returncode == 0 and "already in" in rerun.stdout
    assert hub.head(target, f"refs/pr/{number}") == pr_head

    done = run_cli("finalize", str(spec_path), "--pr", str(number), "-q", env={"HF_ENDPOINT": hub.url})
    assert done.returncode == 0, done.stderr
    files = hub.files_at(target)
    assert not any(p.startswith(".hubmerge/") for p in files)
    merged = {}
    for name, data in files.items():
        if name.endswith(".safetensors"):
            merged.update(load_safetensors(data))
    local_spec = parse_spec(spec_path.read_text().replace(ups["base"], "base").replace(ups["chat"], "chat")
                            .replace(ups["math"], "math"))
    single = run_merge(local_spec, tmp_path / "single", MergeOptions(base_dir=local_family, show_progress=False))
    assert_same_tensors(merged, load_folder(single.output))
    import yaml
    card = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert card["hubmerge"]["content_hash"] == single.content_hash
    index = json.loads(files["model.safetensors.index.json"])
    assert set(index["weight_map"].values()) == {n for n in files if n.endswith(".safetensors")}


def test_missing_part_is_refused_and_main_untouched(hub, setup):
    target, ups, spec_path, spec = setup
    number = open_pr(spec, hub=_client(hub))
    push_part(spec, "1/3", number, hub=_client(hub), show_progress=False)
    push_part(spec, "3/3", number, hub=_client(hub), show_progress=False)
    main_before = hub.head(target)
    with pytest.raises(HubError, match="is missing"):
        finalize(spec, number, hub=_client(hub))
    assert hub.head(target) == main_before


def test_corrupted_part_is_refused(hub, setup):
    target, ups, spec_path, spec = setup
    number = open_pr(spec, hub=_client(hub))
    for i in (1, 2, 3):
        push_part(spec, f"{i}/3", number, hub=_client(hub), show_progress=False)
    ref = f"refs/pr/{number}"
    shard = sorted(n for n in hub.files_at(target, ref) if n.endswith(".safetensors"))[0]
    data = bytearray(hub.read_file(target, shard, ref))
    data[-1] ^= 0xFF
    hub.commit_files(target, {shard: bytes(data)}, branch=ref, message="bit rot")
    main_before = hub.head(target)
    with pytest.raises(HubError, match="does not match what its part wrote"):
        finalize(spec, number, hub=_client(hub))
    assert hub.head(target) == main_before


def test_open_pr_pins_lora_adapters_too(hub, setup, local_family, tmp_path, repo_id_factory):
    sys.path.insert(0, str(Path(__file__).parents[1] / "sources"))
    from lora_adapters import peft_adapter

    target, ups, spec_path, spec = setup
    adapter = repo_id_factory(namespace="up")
    hub.create_repo(adapter, owner="up")
    publish_folder(hub, adapter, peft_adapter(local_family / "chat", tmp_path / "adapter", r=2,
                                              target_modules=["q_proj"]))
    text = spec_path.read_text().replace(f"model: {ups['chat']}", f"model: {ups['chat']}+{adapter}")
    number = open_pr(parse_spec(text), hub=_client(hub))
    recipe = json.loads(hub.read_file(target, ".hubmerge/recipe.json", f"refs/pr/{number}"))["recipe"]
    assert recipe["models"][0]["model"] == f"{ups['chat']}@{hub.head(ups['chat'])}+{adapter}@{hub.head(adapter)}"
