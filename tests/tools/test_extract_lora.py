"""LoRA extraction against mergekit-extract-lora 0.1.5, against the SVD computed independently, and
against PEFT loading the adapter."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from helpers import load_folder
from safetensors.torch import load_file
from tools.tool_models import lora_family, run_mergekit_extract

from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.pipeline.tools import ToolRun, run_tool
from hubmerge.spec import parse_spec
from hubmerge.spec.frontmatter import split_front_matter

pytest.importorskip("peft")

RANK = 8
PREFIX = "base_model.model."


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    out = lora_family(root)
    out["root"] = root
    spec = parse_spec(f"extract_lora: {{model: ft, base_model: base, rank: {RANK}}}\n")
    out["result"] = run_tool(spec, root / "ours", ToolRun(base_dir=root, show_progress=False))
    out["ours"] = root / "ours"
    run_mergekit_extract(out["ft"], out["base"], root / "mk", "--max-rank", str(RANK))
    out["mk"] = root / "mk"
    return out


def _products(folder: Path) -> dict[str, torch.Tensor]:
    """module -> B @ A (transposed back for embeddings) of an adapter folder, in float64."""
    t = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, a in t.items():
        if ".lora_A." in key or key.endswith(".lora_embedding_A"):
            b = t[key.replace("lora_A", "lora_B").replace("lora_embedding_A", "lora_embedding_B")]
            module = key[len(PREFIX):].split(".lora_")[0]
            prod = b.double() @ a.double()
            out[module] = prod.T if "embedding" in key else prod
    return out


def _full(folder: Path) -> dict[str, torch.Tensor]:
    t = load_file(str(folder / "adapter_model.safetensors"))
    return {k[len(PREFIX):]: v for k, v in t.items() if ".lora_" not in k}


def test_same_adapter_as_mergekit(fam):
    """Same rank: every B @ A equal to mergekit's within float32 noise; what we save in full is bitwise
    mergekit's; what mergekit stores and we leave out is unchanged from the base (so both adapters give
    the same model)."""
    ours, theirs = _products(fam["ours"]), _products(fam["mk"])
    assert set(ours) <= set(theirs) and ours
    scale = max(p.abs().max().item() for p in theirs.values())
    for module, prod in ours.items():
        assert (prod - theirs[module]).abs().max().item() <= 1e-5 * scale, module
    left_out = set(theirs) - set(ours)
    assert left_out == {"model.layers.1.self_attn.o_proj"}  # the module the fine-tune did not change
    assert all(theirs[m].abs().max() < 1e-6 * scale for m in left_out)

    base = load_folder(fam["base"])
    full_ours, full_theirs = _full(fam["ours"]), _full(fam["mk"])
    assert set(full_ours) <= set(full_theirs)
    for name, tensor in full_ours.items():
        assert torch.equal(tensor, full_theirs[name]), name
    for name in set(full_theirs) - set(full_ours):
        assert torch.equal(full_theirs[name], base[name]), name
    assert "model.layers.0.input_layernorm.weight" in full_ours  # changed: kept
    assert "model.layers.1.input_layernorm.weight" not in full_ours  # unchanged: left out

    config = json.loads((fam["ours"] / "adapter_config.json").read_text())
    theirs_config = json.loads((fam["mk"] / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == theirs_config["r"] == RANK
    # layer 1's o_proj is unchanged, so PEFT is told about layer 0's by its full name (no empty LoRA)
    assert set(config["target_modules"]) == set(theirs_config["target_modules"]) - {"o_proj"} | {
        "model.layers.0.self_attn.o_proj"}
    assert config["rank_pattern"] == config["alpha_pattern"] == {}
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "base"
    # layer 1's norm is unchanged, so only layer 0's is named; the head and embedding by their short names
    assert sorted(config["modules_to_save"]) == ["embed_tokens", "lm_head", "model.layers.0.input_layernorm",
                                                 "model.layers.0.post_attention_layernorm"]


@pytest.fixture(scope="module")
def merged(fam):
    """``hubmerge merge`` of base+adapter (the adapter folded into the base as it is read)."""
    root = fam["root"]
    run_merge(parse_spec("merge_method: passthrough\nmodels:\n  - model: base+ours\n"), root / "merged",
              MergeOptions(base_dir=root, show_progress=False))
    return load_folder(root / "merged")


def test_reconstruction_error_is_what_the_discarded_singular_values_predict(fam, merged):
    """``hubmerge merge base+adapter`` gives the fine-tune back with, per tensor, the Frobenius error
    sqrt(sum of the discarded s_i^2) of an SVD computed here in float64; the report and the card say so."""
    got, ft, base = merged, load_folder(fam["ft"]), load_folder(fam["base"])
    stats = {s.module: s for s in fam["result"].report.lora}
    total_delta = total_residual = 0.0
    for name, tensor in ft.items():
        module = name.rsplit(".", 1)[0]
        if module not in stats:  # saved in full, or unchanged: exact
            assert torch.equal(got[name], tensor), name
            continue
        s = torch.linalg.svdvals((tensor.double() - base[name].double()))
        predicted = s[RANK:].square().sum().sqrt().item()
        error = (got[name].double() - tensor.double()).norm().item()
        assert error == pytest.approx(predicted, rel=2e-3), name
        assert stats[module].residual_norm == pytest.approx(predicted, rel=1e-3)
        total_delta += s.square().sum().item()
        total_residual += predicted ** 2
    meta, _ = split_front_matter((fam["ours"] / "README.md").read_text())
    recorded = meta["hubmerge"]["extract_lora"]["relative_error"]
    assert recorded == pytest.approx(math.sqrt(total_residual / total_delta), rel=1e-3)
    assert 0 < recorded < 0.05  # the deltas are rank 3 plus small noise


def test_peft_loads_it_and_gives_the_same_model(fam, merged):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(fam["base"]), dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(fam["ours"]))
    assert not [w for w in caught if "key" in str(w.message).lower()], [str(w.message) for w in caught]
    ft = AutoModelForCausalLM.from_pretrained(str(fam["ft"]), dtype=torch.float32)
    ids = torch.tensor([[1, 7, 30, 99, 127]])
    with torch.no_grad():
        assert (model(ids).logits - ft(ids).logits).abs().max() < 0.05
    peft_merged = model.merge_and_unload().state_dict()
    for name, tensor in merged.items():  # PEFT's fold and ours agree
        assert (peft_merged[name] - tensor).abs().max() < 1e-6, name


def test_card_says_adapter_of_the_base(fam):
    meta, body = split_front_matter((fam["ours"] / "README.md").read_text())
    assert meta["library_name"] == "peft"
    assert meta["hubmerge"]["recipe"]["extract_lora"] == {"model": "ft", "base_model": "base", "rank": RANK}
    assert meta["hubmerge"]["content_hash"] == fam["result"].content_hash
    assert "base_model" not in meta  # local parents are not Hub metadata (the Hub test checks the Hub case)
    assert "adapter of (base)" in body and "LoRA extracted (rank <= 8)" in body


def test_sv_epsilon_picks_the_rank_per_module(fam, tmp_path):
    """With sv_epsilon, a module keeps the singular values above it (here the rank-3 signal of most modules,
    fewer for the scaled-down one), recorded in rank_pattern / alpha_pattern."""
    root = fam["root"]
    base, ft = load_folder(fam["base"]), load_folder(fam["ft"])
    eps = 0.01
    spec = parse_spec(f"extract_lora: {{model: ft, base_model: base, rank: 16, sv_epsilon: {eps}}}\n")
    result = run_tool(spec, tmp_path / "eps", ToolRun(base_dir=root, show_progress=False))
    config = json.loads((tmp_path / "eps" / "adapter_config.json").read_text())
    expected = {}
    for s in result.report.lora:
        delta = ft[s.module + ".weight"].double() - base[s.module + ".weight"].double()
        expected[s.module] = min(16, int((torch.linalg.svdvals(delta) > eps).sum()))
    assert {s.module: s.rank for s in result.report.lora} == expected
    top = max(expected.values())
    assert config["r"] == config["lora_alpha"] == top
    assert config["rank_pattern"] == {m: r for m, r in expected.items() if r != top} == config["alpha_pattern"]
    t = load_file(str(tmp_path / "eps" / "adapter_model.safetensors"))
    for module, r in expected.items():
        assert t[f"{PREFIX}{module}.lora_A.weight"].shape[0] == r


def test_tied_embeddings_and_embed_lora(tmp_path):
    """A tied-embedding model: the changed embedding is saved in full with the head that shares it
    (ensure_weight_tying), PEFT loads it tied, and hubmerge folds it back. With embed_lora the embedding
    is a lora_embedding pair (A: r x vocab, B: hidden x r)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fam = lora_family(tmp_path, tie=True, unchanged=())
    spec = parse_spec("extract_lora: {model: ft, base_model: base, rank: 4}\n")
    run_tool(spec, tmp_path / "ad", ToolRun(base_dir=tmp_path, show_progress=False))
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["ensure_weight_tying"] is True and {"embed_tokens", "lm_head"} <= set(config["modules_to_save"])
    ft = load_folder(fam["ft"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(fam["base"]), dtype=torch.float32),
                                      str(tmp_path / "ad")).merge_and_unload()
    assert torch.equal(model.lm_head.weight, ft["model.embed_tokens.weight"])
    run_merge(parse_spec("merge_method: passthrough\nmodels:\n  - model: base+ad\n"), tmp_path / "m",
              MergeOptions(base_dir=tmp_path, show_progress=False))
    assert torch.equal(load_folder(tmp_path / "m")["model.embed_tokens.weight"], ft["model.embed_tokens.weight"])

    spec = parse_spec("extract_lora: {model: ft, base_model: base, rank: 8, embed_lora: true,"
                      " include: [embed_tokens]}\n")
    run_tool(spec, tmp_path / "emb", ToolRun(base_dir=tmp_path, show_progress=False))
    t = load_file(str(tmp_path / "emb" / "adapter_model.safetensors"))
    assert set(t) == {f"{PREFIX}model.embed_tokens.lora_embedding_A", f"{PREFIX}model.embed_tokens.lora_embedding_B"}
    a, b = t[f"{PREFIX}model.embed_tokens.lora_embedding_A"], t[f"{PREFIX}model.embed_tokens.lora_embedding_B"]
    assert a.shape == (8, fam["shape"].vocab) and b.shape == (fam["shape"].hidden, 8)
    base = load_folder(fam["base"])
    delta = ft["model.embed_tokens.weight"] - base["model.embed_tokens.weight"]
    assert (b @ a).T.sub(delta).abs().max() < 1e-6  # five changed rows: rank 5, kept whole
    config = json.loads((tmp_path / "emb" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["embed_tokens"] and "ensure_weight_tying" not in config
    # PEFT merges an embedding LoRA into the tied weight once (with ensure_weight_tying it would add it twice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(fam["base"]), dtype=torch.float32),
                                           str(tmp_path / "emb")).merge_and_unload()
    assert (merged.lm_head.weight - ft["model.embed_tokens.weight"]).abs().max() < 1e-6


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_other_architectures(arch, tmp_path, caplog):
    """GPT-2's Conv1D layers (fan_in_fan_out) and Qwen2's biased q/k/v: PEFT loads the adapter and merges it
    to what hubmerge folds; a changed bias of a LoRA layer is named in a warning (PEFT cannot carry it)."""
    import logging

    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    fam = lora_family(tmp_path, arch=arch, unchanged=())
    bias = "model.layers.0.self_attn.q_proj.bias"
    if arch == "qwen2":
        weights = load_file(str(fam["ft"] / "model.safetensors"))
        weights[bias] += 0.01
        save_file(weights, str(fam["ft"] / "model.safetensors"), metadata={"format": "pt"})
    caplog.set_level(logging.WARNING)
    result = run_tool(parse_spec("extract_lora: {model: ft, base_model: base, rank: 8}\n"), tmp_path / "ad",
                      ToolRun(base_dir=tmp_path, show_progress=False))
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (arch == "gpt2")
    assert result.report.dropped_bias == ([bias] if arch == "qwen2" else [])
    assert any(bias in r.getMessage() for r in caplog.records) is (arch == "qwen2")
    run_merge(parse_spec("merge_method: passthrough\nmodels:\n  - model: base+ad\n"), tmp_path / "m",
              MergeOptions(base_dir=tmp_path, show_progress=False))
    ours, ft, base = load_folder(tmp_path / "m"), load_folder(fam["ft"]), load_folder(fam["base"])
    peft_merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(fam["base"]), dtype=torch.float32),
                                            str(tmp_path / "ad")).merge_and_unload().state_dict()
    stats = {s.module: s for s in result.report.lora}
    for name, tensor in ours.items():
        assert (peft_merged[name] - tensor).abs().max() < 1e-6, name
        module = name.rsplit(".", 1)[0]
        if module in stats and name.endswith(".weight"):  # the error the discarded singular values give
            delta = ft[name].double() - base[name].double()
            s = torch.linalg.svdvals(delta)
            assert (tensor.double() - ft[name].double()).norm().item() == pytest.approx(
                s[8:].square().sum().sqrt().item(), rel=2e-3), name
        elif name != bias:
            assert torch.equal(tensor, ft[name]), name
