"""The MoE view of a checkpoint, on small synthetic checkpoints: fusing by byte ranges, from headers only,
local or over the Hub, and clear errors for checkpoints whose experts do not fit together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_folder, publish_folder
from safetensors.torch import save_file

from hubmerge.cli import main
from hubmerge.errors import SourceError
from hubmerge.hub import Hub
from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.sources.moe import AssembledTensorInfo
from hubmerge.sources.open import open_model
from hubmerge.spec import parse_spec
from hubmerge.spec.model import ModelRef

E, INTER, H = 3, 6, 4  # experts, expert intermediate size, hidden size
CONFIG = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_hidden_layers": 2,
          "hidden_size": H, "intermediate_size": INTER, "num_local_experts": E, "vocab_size": 8}


def mixtral_tensors(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {"model.embed_tokens.weight": torch.randn(8, H, generator=gen), "model.norm.weight": torch.randn(H, generator=gen),
           "lm_head.weight": torch.randn(8, H, generator=gen)}
    for layer in range(2):
        p = f"model.layers.{layer}."
        out[p + "self_attn.q_proj.weight"] = torch.randn(H, H, generator=gen)
        out[p + "block_sparse_moe.gate.weight"] = torch.randn(E, H, generator=gen)
        for e in range(E):
            for w, shape in (("w1", (INTER, H)), ("w2", (H, INTER)), ("w3", (INTER, H))):
                out[p + f"block_sparse_moe.experts.{e}.{w}.weight"] = torch.randn(shape, generator=gen)
    return {k: v.to(torch.bfloat16) for k, v in out.items()}


def write_model(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 1, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]  # every shard holds some experts of every layer
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / file))
        weight_map.update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def expected_fused(t: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    """transformers 5's layout, computed independently: stack experts, gate rows before up rows."""
    p = f"model.layers.{layer}.block_sparse_moe.experts."
    gate = torch.stack([t[f"{p}{e}.w1.weight"] for e in range(E)])
    up = torch.stack([t[f"{p}{e}.w3.weight"] for e in range(E)])
    return {f"model.layers.{layer}.mlp.experts.gate_up_proj": torch.cat([gate, up], dim=1),
            f"model.layers.{layer}.mlp.experts.down_proj": torch.stack([t[f"{p}{e}.w2.weight"] for e in range(E)])}


@pytest.mark.parametrize("shards", [1, 3])
def test_per_expert_tensors_are_served_fused(tmp_path, shards):
    tensors = mixtral_tensors(0)
    source = open_model(ModelRef(str(write_model(tmp_path / "m", tensors, shards))))
    try:
        assert sorted(source.tensors) == sorted(
            ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
            + [f"model.layers.{i}.{n}" for i in range(2) for n in
               ("self_attn.q_proj.weight", "mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")])
        for layer in range(2):
            for name, want in expected_fused(tensors, layer).items():
                info = source.tensors[name]
                assert isinstance(info, AssembledTensorInfo) and info.shape == tuple(want.shape)
                assert info.nbytes == want.numel() * 2 and len(info.pieces) == E * (2 if "gate_up" in name else 1)
                assert torch.equal(source.reader.read(info), want)
        gate = source.tensors["model.layers.1.mlp.gate.weight"]  # renamed only: read as it is
        assert torch.equal(source.reader.read(gate), tensors["model.layers.1.block_sparse_moe.gate.weight"])
    finally:
        source.close()


def test_view_is_planned_from_headers_alone(tmp_path):
    """Opening and planning never touch tensor data: zeroing every data byte after opening changes what is
    read, not what is planned (the view holds byte ranges, not tensors)."""
    folder = write_model(tmp_path / "m", mixtral_tensors(1))
    source = open_model(ModelRef(str(folder)))
    try:
        path = folder / "model.safetensors"
        raw = bytearray(path.read_bytes())
        start = 8 + int.from_bytes(raw[:8], "little")
        path.write_bytes(bytes(raw[:start]) + bytes(len(raw) - start))
        fused = source.reader.read(source.tensors["model.layers.0.mlp.experts.down_proj"])
        assert fused.shape == (E, H, INTER) and not fused.any()
    finally:
        source.close()


def test_merge_of_hub_and_local_experts_reads_only_the_pieces(hub, repo_id_factory, tmp_path):
    local = write_model(tmp_path / "a", mixtral_tensors(2), shards=2)
    other = write_model(tmp_path / "b", mixtral_tensors(3))
    repo = repo_id_factory()
    publish_folder(hub, repo, local)
    text = "merge_method: slerp\nbase_model: {a}\nmodels: [{{model: {a}}}, {{model: {b}}}]\nparameters: {{t: 0.3}}\n"
    spec_local = parse_spec(text.format(a=str(local), b=str(other)))
    run_merge(spec_local, tmp_path / "local", MergeOptions(show_progress=False))
    hub.clear_log()
    run_merge(parse_spec(text.format(a=repo, b=str(other))), tmp_path / "remote", MergeOptions(show_progress=False),
              hub=Hub(endpoint=hub.url, use_cache=False))
    ours, reference = load_folder(tmp_path / "remote"), load_folder(tmp_path / "local")
    assert sorted(ours) == sorted(reference) and all(torch.equal(ours[k], reference[k]) for k in ours)
    data = sum(t.numel() * 2 for t in mixtral_tensors(2).values())
    served = hub.bytes_for(repo, "model-00001-of-00002.safetensors") + hub.bytes_for(repo, "model-00002-of-00002.safetensors")
    assert data <= served <= data + 4096  # the tensors' bytes, plus the two headers


def _refused(tmp_path, tensors, match, config=None):
    folder = write_model(tmp_path / "bad", tensors, config=config)
    with pytest.raises(SourceError, match=match) as err:
        open_model(ModelRef(str(folder))).close()
    assert "\n" not in err.value.message


def test_missing_expert_names_the_checkpoint_tensor(tmp_path):
    tensors = mixtral_tensors(4)
    del tensors["model.layers.1.block_sparse_moe.experts.1.w3.weight"]
    _refused(tmp_path, tensors, r"'model\.layers\.1\.block_sparse_moe\.experts\.1\.w3\.weight' is missing")


@pytest.mark.parametrize("shape, match", [
    ((H + 1, INTER), r"experts\.2\.w2\.weight' has shape \[5, 6\], expert 0's has \[4, 6\]"),
    ((H, INTER + 1), r"experts\.2\.w2\.weight' is BF16 \[4, 7\], which does not stack with '.*experts\.0\.w2\.weight'"),
])
def test_experts_of_different_shapes_are_refused(tmp_path, shape, match):
    tensors = mixtral_tensors(5)
    tensors["model.layers.0.block_sparse_moe.experts.2.w2.weight"] = torch.zeros(shape, dtype=torch.bfloat16)
    _refused(tmp_path, tensors, match)


def test_checkpoint_mixing_both_layouts_is_refused(tmp_path):
    tensors = mixtral_tensors(6)
    tensors["model.layers.0.mlp.experts.down_proj"] = torch.zeros(E, H, INTER, dtype=torch.bfloat16)
    _refused(tmp_path, tensors, "mixes the two MoE layouts")


def test_cli_reports_a_broken_moe_checkpoint_in_one_line(tmp_path, capsys):
    tensors = mixtral_tensors(7)
    del tensors["model.layers.0.block_sparse_moe.experts.0.w1.weight"]
    write_model(tmp_path / "bad", tensors)
    (tmp_path / "spec.yml").write_text("merge_method: linear\nmodels:\n  - model: bad\n    parameters: {weight: 1}\n")
    assert main(["validate", str(tmp_path / "spec.yml"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad: tensor 'model.layers.0.block_sparse_moe.experts.0.w1.weight' is missing")
    assert len(err.strip().splitlines()) == 2 and "Traceback" not in err  # the message, then its hint


def test_validate_lists_the_fused_tensors(tmp_path, capsys):
    write_model(tmp_path / "a", mixtral_tensors(8))
    (tmp_path / "spec.yml").write_text("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n")
    assert main(["validate", str(tmp_path / "spec.yml"), "--json", "-q"]) == 0
    planned = {t["name"]: t["shape"] for t in json.loads(capsys.readouterr().out)["plan"]}
    assert planned["model.layers.1.mlp.experts.gate_up_proj"] == [E, 2 * INTER, H]
    assert not [n for n in planned if "block_sparse_moe" in n]
