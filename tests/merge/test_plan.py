"""The plan, inspected without running a merge: tensors, layer positions, parameters, early errors."""

from __future__ import annotations

import json

import pytest
from helpers import family

from hubmerge.errors import PlanError, SpecError
from hubmerge.pipeline.run import plan_spec
from hubmerge.spec import parse_spec


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    family(root)
    return root


def _plan(text, root):
    plan = plan_spec(parse_spec(text), base_dir=root)
    for m in plan.models:
        m.close()
    return plan


def test_layer_gradient_positions_and_pre_post_at_t0(llama):
    plan = _plan("""
merge_method: linear
models:
  - model: chat
    parameters: {weight: [0.0, 0.3]}
  - model: math
    parameters: {weight: 1.0}
""", llama)
    by_name = {t.name: t for t in plan.tensors}
    # 4 layers: t = i/3, weight = 0.3 * t
    for i in range(4):
        assert by_name[f"model.layers.{i}.mlp.up_proj.weight"].kwargs["weights"][0] == pytest.approx(0.3 * i / 3)
    assert by_name["model.embed_tokens.weight"].kwargs["weights"][0] == 0.0
    assert by_name["lm_head.weight"].kwargs["weights"][0] == 0.0
    names = [t.name for t in plan.tensors]
    assert names[0] == "model.embed_tokens.weight" and names[-2:] == ["lm_head.weight", "model.norm.weight"]
    assert plan.num_layers == 4


def test_frankenmerge_layer_mapping_and_repeated_layers(llama):
    plan = _plan("""
merge_method: passthrough
slices:
  - sources: [{model: base, layer_range: [0, 3]}]
  - sources: [{model: chat, layer_range: [1, 4]}]
  - sources: [{model: chat, layer_range: [1, 2]}]
""", llama)
    assert plan.num_layers == 7
    by_name = {t.name: t for t in plan.tensors}

    def src(i):
        first = by_name[f"model.layers.{i}.self_attn.q_proj.weight"].others[0]
        return plan.models[first.model].name, first.info.name

    assert src(0) == ("base", "model.layers.0.self_attn.q_proj.weight")
    assert src(3) == ("chat", "model.layers.1.self_attn.q_proj.weight")
    assert src(5) == ("chat", "model.layers.3.self_attn.q_proj.weight")
    assert src(6) == ("chat", "model.layers.1.self_attn.q_proj.weight")  # repeated layer


def test_one_layer_slice_sits_at_t1(llama):
    plan = _plan("""
merge_method: slerp
base_model: base
slices:
  - sources: [{model: base, layer_range: [0, 1]}, {model: chat, layer_range: [0, 1]}]
parameters: {t: [0.2, 0.8]}
""", llama)
    assert {t.kwargs["t"] for t in plan.tensors if ".layers." in t.name} == {0.8}


def test_layer_count_mismatch_is_caught_before_reading(tmp_path):
    family(tmp_path / "a", layers=4)
    family(tmp_path / "b", layers=3)
    with pytest.raises(PlanError, match="different layer counts"):
        _plan("merge_method: linear\nmodels:\n  - model: a/base\n    parameters: {weight: 1}\n"
              "  - model: b/base\n    parameters: {weight: 1}\n", tmp_path)


def test_shape_mismatch_names_tensor_and_models(tmp_path):
    family(tmp_path / "a", hidden=64)
    family(tmp_path / "b", hidden=32, intermediate=64)
    with pytest.raises(PlanError) as err:
        _plan("merge_method: linear\nmodels:\n  - model: a/base\n    parameters: {weight: 1}\n"
              "  - model: b/base\n    parameters: {weight: 1}\n", tmp_path)
    assert "model.embed_tokens.weight" in str(err.value) and "a/base" in str(err.value) and "b/base" in str(err.value)


def test_vocab_mismatch_suggests_tokenizer_config(tmp_path):
    family(tmp_path / "a", vocab=128)
    family(tmp_path / "b", vocab=136)
    with pytest.raises(PlanError) as err:
        _plan("merge_method: linear\nmodels:\n  - model: a/base\n    parameters: {weight: 1}\n"
              "  - model: b/base\n    parameters: {weight: 1}\n", tmp_path)
    assert "vocabulary" in str(err.value) and "tokenizer" in str(err.value)


def test_filter_leaving_required_parameter_unset(llama):
    with pytest.raises(SpecError, match="catch-all"):
        _plan("merge_method: linear\nmodels:\n  - model: chat\n    parameters: {weight: [{filter: mlp, value: 1}]}\n"
              "  - model: math\n    parameters: {weight: 1}\n", llama)


def test_tied_embeddings_alias(tmp_path):
    family(tmp_path / "tied", tie_embeddings=True)
    family(tmp_path / "untied")
    plan = _plan("merge_method: linear\nmodels:\n  - model: untied/base\n    parameters: {weight: 1}\n"
                 "  - model: tied/chat\n    parameters: {weight: 1}\n", tmp_path)
    head = next(t for t in plan.tensors if t.name == "lm_head.weight")
    assert [i.info.name for i in head.others] == ["lm_head.weight", "model.embed_tokens.weight"]


def test_validate_cli_prints_plan(llama, capsys):
    from hubmerge.cli import main

    (llama / "v.yml").write_text("merge_method: ties\nbase_model: base\nmodels:\n  - model: chat\n"
                                 "    parameters: {weight: 1, density: 0.5}\n")
    assert main(["validate", str(llama / "v.yml"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tensors"] == len(doc["plan"]) and doc["layers"] == 4
    up = next(t for t in doc["plan"] if t["name"] == "model.layers.0.mlp.up_proj.weight")
    assert up["base"] == "base" and up["inputs"] == ["base", "chat"] and up["params"]["densities"] == [0.5]


def test_per_layer_config_lists_follow_the_source_layers(tmp_path):
    from hubmerge.merge.plan_config import output_config

    family(tmp_path, arch="gemma2", layers=4)  # layer_types alternates sliding/full from layer 0
    plan = _plan("merge_method: passthrough\nslices:\n  - sources: [{model: base, layer_range: [1, 4]}]\n"
                 "  - sources: [{model: chat, layer_range: [1, 2]}]\n", tmp_path)
    assert plan.layer_origin == [1, 2, 3, 1]
    config = output_config(plan)
    assert config["num_hidden_layers"] == 4
    assert config["layer_types"] == ["full_attention", "sliding_attention", "full_attention", "full_attention"]
