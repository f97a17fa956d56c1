"""MoE checkpoints: per-expert and fused inputs merged as mergekit 0.1.5 merges them, bit for bit.

The models are built by transformers 5 (``from_config`` + ``save_pretrained``, which writes experts per
expert, as Hub checkpoints are) for Mixtral, Qwen3-MoE, DeepSeek-V3 (dense first layer, shared expert)
and AFMoE; one Mixtral input is sharded, one is rewritten fused (transformers' own in-memory layout).
Every recipe runs once through a single mergekit-multi process and once through hubmerge.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import load_folder
from moe_checkpoint_models import build, config_of, fused_copy, load_check

from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.sources.open import open_model
from hubmerge.spec import parse_spec
from hubmerge.spec.model import ModelRef

pytestmark = pytest.mark.mergekit

MERGEKIT_MULTI = Path(sys.executable).with_name("mergekit-multi")
if not MERGEKIT_MULTI.exists():
    pytest.skip("mergekit 0.1.5 is not installed", allow_module_level=True)

RECIPES = {
    "mixtral_linear": """
merge_method: linear
models:
  - model: mix-base
    parameters: {weight: [{filter: mlp, value: [0.2, 0.6]}, {value: 0.5}]}
  - model: mix-a
    parameters: {weight: 0.3}
  - model: mix-b
    parameters: {weight: [0.1, 0.4]}
dtype: bfloat16
""",
    "mixtral_slerp": """
merge_method: slerp
base_model: mix-base
slices:
  - sources:
      - {model: mix-base, layer_range: [0, 3]}
      - {model: mix-a, layer_range: [0, 3]}
parameters:
  t:
    - {filter: self_attn, value: [0, 0.5, 1]}
    - {filter: mlp, value: [1, 0.3, 0]}
    - value: 0.5
dtype: bfloat16
""",
    "mixtral_ties": """
merge_method: ties
base_model: mix-base
models:
  - model: mix-a
    parameters: {weight: 0.5, density: 0.4}
  - model: mix-b
    parameters: {weight: [{filter: experts, value: 0.8}, {value: 0.3}], density: [0.3, 0.9]}
dtype: bfloat16
""",
    "mixtral_passthrough": """
merge_method: passthrough
slices:
  - sources: [{model: mix-base, layer_range: [0, 2]}]
  - sources:
      - model: mix-a
        layer_range: [1, 3]
        parameters:
          scale: [{filter: mlp, value: 0.5}, {value: 1.0}]
""",
    "mixtral_fused_and_per_expert": """
merge_method: slerp
base_model: mix-fused
models:
  - model: mix-fused
  - model: mix-b
parameters:
  t: [0.2, 0.9]
dtype: bfloat16
""",
    "qwen3_slerp": """
merge_method: slerp
base_model: qwen-base
models:
  - model: qwen-base
  - model: qwen-a
parameters:
  t: [{filter: mlp, value: [0.9, 0.1]}, {filter: self_attn, value: 0.3}, {value: 0.6}]
dtype: bfloat16
""",
    "qwen3_ties": """
merge_method: ties
base_model: qwen-base
models:
  - model: qwen-a
    parameters: {weight: 0.7, density: 0.5}
  - model: qwen-b
    parameters: {weight: 0.4, density: [0.2, 0.8]}
dtype: bfloat16
""",
    "deepseek_linear": """
merge_method: linear
models:
  - model: ds-base
    parameters: {weight: 0.6}
  - model: ds-a
    parameters: {weight: [{filter: mlp.experts, value: 0.1}, {value: 0.4}]}
dtype: bfloat16
""",
    "afmoe_linear": """
merge_method: linear
models:
  - model: af-base
    parameters: {weight: 0.5}
  - model: af-a
    parameters: {weight: 0.5}
dtype: bfloat16
""",
}


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    build(root / "mix-base", "mixtral", 0)
    build(root / "mix-a", "mixtral", 1, like=root / "mix-base", shard_size="40KB")
    build(root / "mix-b", "mixtral", 2, like=root / "mix-base")
    fused_copy(root / "mix-a", root / "mix-fused")
    build(root / "qwen-base", "qwen3_moe", 3)
    build(root / "qwen-a", "qwen3_moe", 4, like=root / "qwen-base")
    build(root / "qwen-b", "qwen3_moe", 5, like=root / "qwen-base")
    build(root / "ds-base", "deepseek_v3", 6)
    build(root / "ds-a", "deepseek_v3", 7, like=root / "ds-base")
    build(root / "af-base", "afmoe", 8)
    build(root / "af-a", "afmoe", 9, like=root / "af-base")
    docs = [{"name": name, **yaml.safe_load(text)} for name, text in RECIPES.items()]
    (root / "all.yml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(MERGEKIT_MULTI), "all.yml", "--intermediate-dir", "mergekit", "--allow-crimes",
                           "--no-write-model-card"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, text in RECIPES.items():
        run_merge(parse_spec(text), root / "ours" / name,
                  MergeOptions(base_dir=root, show_progress=False, max_shard_size=60_000))
    return root


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_tensors_and_config_equal_mergekit(moe, name):
    ours, theirs = load_folder(moe / "ours" / name), load_folder(moe / "mergekit" / name)
    if name.startswith("deepseek"):
        # mergekit 0.1.5 infers DeepSeek's architecture, marks the fused experts optional (layer 0 is dense)
        # and then skips them: its output has no routed experts. We write them; the rest must agree.
        dropped = {f"model.layers.{i}.mlp.experts.{p}" for i in (1, 2) for p in ("gate_up_proj", "down_proj")}
        assert set(ours) - set(theirs) == dropped and not set(theirs) - set(ours)
        ours = {k: v for k, v in ours.items() if k not in dropped}
    assert sorted(ours) == sorted(theirs)
    different = [k for k in ours if ours[k].dtype != theirs[k].dtype or not torch.equal(ours[k], theirs[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
    assert config_of(moe / "ours" / name) == config_of(moe / "mergekit" / name)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_output_loads_in_transformers(moe, name):
    report, finite = load_check(moe / "ours" / name)
    assert report == {} and finite


def test_output_layout_is_transformers_5s(moe):
    ours = load_folder(moe / "ours" / "mixtral_ties")
    assert not [k for k in ours if "block_sparse_moe" in k or ".experts.0." in k]
    cfg = config_of(moe / "mix-base")
    e, i, h = cfg["num_local_experts"], cfg["intermediate_size"], cfg["hidden_size"]
    assert ours["model.layers.0.mlp.experts.gate_up_proj"].shape == (e, 2 * i, h)
    assert ours["model.layers.0.mlp.experts.down_proj"].shape == (e, h, i)
    assert ours["model.layers.0.mlp.gate.weight"].shape == (e, h)
    passthrough = config_of(moe / "ours" / "mixtral_passthrough")
    assert passthrough["num_hidden_layers"] == 4
    afmoe = load_folder(moe / "ours" / "afmoe_linear")  # mergekit keeps AFMoE's experts per expert
    assert "model.layers.1.mlp.experts.3.gate_proj.weight" in afmoe and not [k for k in afmoe if "gate_up" in k]


@pytest.mark.parametrize("model", ["mix-a", "ds-a", "mix-fused"])
def test_view_equals_transformers_own_state_dict(moe, model):
    """The fused tensors hubmerge reads equal the parameters transformers builds when it loads the model."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(moe / model, dtype=torch.bfloat16).state_dict()
    source = open_model(ModelRef(model), base_dir=moe)
    try:
        assert sorted(source.tensors) == sorted(reference)
        for name, info in source.tensors.items():
            assert torch.equal(source.reader.read(info), reference[name]), name
    finally:
        source.close()


def test_fused_afmoe_input_is_split_back(moe, tmp_path):
    fused = fused_copy(moe / "af-a", tmp_path / "af-fused")
    split, original = open_model(ModelRef(str(fused))), open_model(ModelRef("af-a"), base_dir=moe)
    try:
        assert sorted(split.tensors) == sorted(original.tensors)
        for name, info in original.tensors.items():
            assert torch.equal(split.reader.read(split.tensors[name]), original.reader.read(info)), name
    finally:
        split.close()
        original.close()
