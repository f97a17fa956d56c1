"""hubmerge moe against mergekit-moe 0.1.5 (its CLI, in one subprocess for every recipe) on tiny Llama,
Mistral, Qwen2 and Qwen3 models built by transformers: every tensor bitwise equal (router rows of the
random modes excepted: there both draw, from different generators), config.json and tokenizer files byte
for byte, and the outputs load in transformers and give mergekit's logits."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import load_folder
from moe_models import dense_family

from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec import parse_spec

pytestmark = pytest.mark.mergekit

RECIPES = {
    # Llama base with tied embeddings (no lm_head), negative prompts, a residual scale, 3 experts.
    "mixtral_hidden": """
base_model: ./llama/base
gate_mode: hidden
dtype: bfloat16
experts:
  - source_model: ./llama/e1
    positive_prompts: ["w5 w6 w7", "w8 w9 w10 w11 w12"]
    negative_prompts: ["w20 w21"]
  - source_model: ./llama/e2
    positive_prompts: ["w30 w31 w32 w33"]
    residual_scale: 0.5
  - source_model: ./llama/e3
    positive_prompts: ["w40", "w41 w42 w43 w44 w45", "w50 w51"]
""",
    # float32 Mistral models written as float16, router from token embeddings.
    "mixtral_cheap_f16": """
base_model: ./mistral/base
gate_mode: cheap_embed
dtype: float16
experts_per_token: 1
experts:
  - source_model: ./mistral/e1
    positive_prompts: ["w5 w6 w7"]
  - source_model: ./mistral/e2
    positive_prompts: ["w60 w61", "w62"]
    negative_prompts: ["w5"]
""",
    # Qwen2-MoE from Qwen2 experts, the base as the gated shared expert (mergekit 0.1.5 reads a shared expert
    # only when it is also the base or a routed expert).
    "qwen2moe_hidden": """
base_model: ./qwen2/base
gate_mode: hidden
experts:
  - source_model: ./qwen2/e1
    positive_prompts: ["w5 w6 w7"]
    negative_prompts: ["w90 w91 w92"]
  - source_model: ./qwen2/e2
    positive_prompts: ["w30 w31"]
shared_experts:
  - source_model: ./qwen2/base
    positive_prompts: ["w70 w71 w72 w73"]
    residual_scale: 0.25
""",
    # "qwen" selects both Qwen families as mergekit matches names; Llama experts leave Qwen-MoE, whose attention
    # biases the Llama base lacks (zeros, as mergekit writes them).
    "qwen_from_llama": """
base_model: ./llama/base
architecture: qwen
gate_mode: cheap_embed
experts:
  - source_model: ./llama/e1
    positive_prompts: ["w5 w6"]
  - source_model: ./llama/e2
    positive_prompts: ["w30 w31 w32"]
shared_experts:
  - source_model: ./llama/e2
    positive_prompts: ["w99"]
""",
    "qwen3_hidden_avg": """
base_model: ./qwen3/base
architecture: qwen3
gate_mode: hidden_avg
experts:
  - source_model: ./qwen3/e1
    positive_prompts: ["w5 w6 w7", "w8"]
  - source_model: ./qwen3/e2
    positive_prompts: ["w30 w31"]
  - source_model: ./qwen3/e3
    positive_prompts: ["w60 w61 w62"]
""",
    "deepseek_random": """
base_model: ./llama/base
gate_mode: random
experts:
  - source_model: ./llama/e1
  - source_model: ./llama/e2
shared_experts:
  - source_model: ./llama/base
""",
    "mixtral_uniform_noise": """
base_model: ./mistral/base
gate_mode: uniform_random
experts:
  - source_model: ./mistral/e1
    positive_prompts: ["w1"]
  - source_model: ./mistral/e2
    positive_prompts: ["w2"]
    noise_scale: 0.01
""",
}
RANDOM_ROUTERS = {"deepseek_random", "mixtral_uniform_noise"}

_DRIVER = """
import sys
from mergekit.scripts.moe import main
for recipe, out in zip(sys.argv[1::2], sys.argv[2::2]):
    main.main([recipe, out], standalone_mode=False)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-mk")
    dense_family(root / "llama", "llama", tie=True, seed=1)
    dense_family(root / "mistral", "mistral", names=("base", "e1", "e2"), dtype=torch.float32, seed=2)
    dense_family(root / "qwen2", "qwen2", names=("base", "e1", "e2"), seed=3)
    dense_family(root / "qwen3", "qwen3", seed=4, head_dim=16)
    args = []
    for name, text in RECIPES.items():
        (root / f"{name}.yml").write_text(text)
        args += [f"{name}.yml", f"mk-{name}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, text in RECIPES.items():
        run_merge(parse_spec(text), root / f"hm-{name}", MergeOptions(base_dir=root, show_progress=False))
    return root


def _pair(built, name):
    return load_folder(built / f"hm-{name}"), load_folder(built / f"mk-{name}")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_tensors_bitwise_equal(built, name):
    ours, theirs = _pair(built, name)
    assert sorted(ours) == sorted(theirs), set(ours) ^ set(theirs)
    skip = {k for k in ours if k.endswith("mlp.gate.weight")} if name in RANDOM_ROUTERS else set()
    if name == "mixtral_uniform_noise":  # expert 1 has noise; mergekit draws it from the global RNG
        skip |= {k for k in ours if ".mlp.experts." in k}
    different = [k for k in ours if k not in skip and (ours[k].dtype != theirs[k].dtype or not torch.equal(ours[k], theirs[k]))]
    assert not different, different
    for k in skip:
        assert ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype, k
    assert len(ours) - len(skip) >= 20


# transformers 5 saves how a tokenizer was loaded (mergekit ran offline here, from a local folder; so did we).
LOADING_KEYS = ("is_local", "local_files_only")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_config_and_tokenizer_files_equal(built, name):
    for file in ("config.json", "tokenizer.json"):
        assert (built / f"hm-{name}" / file).read_bytes() == (built / f"mk-{name}" / file).read_bytes(), file
    ours, theirs = (json.loads((built / f"{who}-{name}" / "tokenizer_config.json").read_text()) for who in ("hm", "mk"))
    for doc in (ours, theirs):
        for key in LOADING_KEYS:
            doc.pop(key, None)
    assert ours == theirs and ours["pad_token"] == "<s>"  # mergekit-moe pads with BOS, and saves it so
    ours = yaml_doc(built / f"hm-{name}" / "mergekit_moe_config.yml")
    assert ours == yaml_doc(built / f"{name}.yml")


def yaml_doc(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_families_and_layouts(built):
    """What each recipe became: the family mergekit picks, fused or per-expert experts, zero biases."""
    arch = {n: json.loads((built / f"hm-{n}" / "config.json").read_text())["architectures"][0] for n in RECIPES}
    assert arch == {"mixtral_hidden": "MixtralForCausalLM", "mixtral_cheap_f16": "MixtralForCausalLM",
                    "qwen2moe_hidden": "Qwen2MoeForCausalLM", "qwen_from_llama": "Qwen2MoeForCausalLM",
                    "qwen3_hidden_avg": "Qwen3MoeForCausalLM", "deepseek_random": "DeepseekForCausalLM",
                    "mixtral_uniform_noise": "MixtralForCausalLM"}
    mixtral = load_folder(built / "hm-mixtral_hidden")
    assert "lm_head.weight" not in mixtral  # tied embeddings: the base has no head, neither has the MoE
    e1, e3 = load_folder(built / "llama" / "e1"), load_folder(built / "llama" / "e3")
    fused = mixtral["model.layers.1.mlp.experts.gate_up_proj"]
    assert fused.shape == (3, 192, 64)
    assert torch.equal(fused[0, :96], e1["model.layers.1.mlp.gate_proj.weight"])
    assert torch.equal(fused[2, 96:], e3["model.layers.1.mlp.up_proj.weight"])
    e2 = load_folder(built / "llama" / "e2")
    down = mixtral["model.layers.2.mlp.experts.down_proj"]
    assert torch.equal(down[1], e2["model.layers.2.mlp.down_proj.weight"] * 0.5)  # residual_scale, in bf16
    qwen = load_folder(built / "hm-qwen_from_llama")
    assert not qwen["model.layers.0.self_attn.q_proj.bias"].any()
    assert qwen["model.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 64)
    half = load_folder(built / "hm-mixtral_cheap_f16")
    assert half["model.layers.0.mlp.gate.weight"].dtype == torch.float16


def _independent_seed(seed: int, name: str) -> int:
    """The documented seeding: the first 8 bytes of sha256('<seed>:<tensor>'), little endian, 63 bits."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def test_random_modes_seeded_per_tensor(built):
    ds = load_folder(built / "hm-deepseek_random")
    for layer in range(3):
        name = f"model.layers.{layer}.mlp.gate.weight"
        gen = torch.Generator().manual_seed(_independent_seed(0, name))
        assert torch.equal(ds[name], torch.randn((2, 64), generator=gen).to(torch.bfloat16)), name
    uni = load_folder(built / "hm-mixtral_uniform_noise")
    scale = 1 / math.sqrt(64)
    name = "model.layers.1.mlp.gate.weight"
    gen = torch.Generator().manual_seed(_independent_seed(0, name))
    assert torch.equal(uni[name], torch.rand((2, 64), generator=gen) * 2 * scale - scale)
    assert uni[name].abs().max() <= scale
    # Expert 1's noise: part k of a fused tensor draws from (seed, tensor#k); expert 0 is untouched.
    e1, e2 = load_folder(built / "mistral" / "e1"), load_folder(built / "mistral" / "e2")
    fused = "model.layers.2.mlp.experts.gate_up_proj"
    src = e2["model.layers.2.mlp.up_proj.weight"]
    gen = torch.Generator().manual_seed(_independent_seed(0, f"{fused}#3"))
    expected = src + torch.randn(src.shape, generator=gen, dtype=src.dtype) * 0.01
    assert torch.equal(uni[fused][1, 96:], expected)
    assert torch.equal(uni[fused][0, :96], e1["model.layers.2.mlp.gate_proj.weight"])
    # The same recipe with another hubmerge.seed draws other rows.
    text = RECIPES["deepseek_random"] + "hubmerge: {seed: 7}\n"
    run_merge(parse_spec(text), built / "seed7", MergeOptions(base_dir=built, show_progress=False))
    other = load_folder(built / "seed7")
    assert not torch.equal(other["model.layers.0.mlp.gate.weight"], ds["model.layers.0.mlp.gate.weight"])
    assert torch.equal(other["model.layers.0.mlp.experts.1.up_proj.weight"], ds["model.layers.0.mlp.experts.1.up_proj.weight"])


@pytest.mark.parametrize("name", ["mixtral_hidden", "qwen2moe_hidden", "qwen3_hidden_avg"])
def test_loads_in_transformers_with_mergekits_logits(built, name):
    from transformers import AutoModelForCausalLM

    ours, info = AutoModelForCausalLM.from_pretrained(built / f"hm-{name}", dtype=torch.bfloat16,
                                                      output_loading_info=True)
    theirs = AutoModelForCausalLM.from_pretrained(built / f"mk-{name}", dtype=torch.bfloat16)
    assert type(ours).__name__ == json.loads((built / f"hm-{name}" / "config.json").read_text())["architectures"][0]
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.tensor([[1, 9, 10, 11, 12], [1, 34, 35, 36, 90], [1, 64, 3, 70, 71]])
    with torch.no_grad():
        a, b = ours(input_ids=ids).logits, theirs(input_ids=ids).logits
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    assert torch.equal(a, b)
    generated = ours.generate(input_ids=ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=3,
                              do_sample=False)
    assert generated.shape == (1, 5 + 3)
