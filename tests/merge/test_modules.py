"""Modules of a model (hubmerge/merge/modules.py, architectures.yml) and the ``modules:`` grammar, on models built
by transformers: what is found, what validate prints, how the config follows, and the errors for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mergekit
import pytest
import torch
import yaml
from arch_models import forward_finite, load_checked
from helpers import load_folder
from safetensors import safe_open

from hubmerge.cli import main as cli_main
from hubmerge.merge.modules import DEFAULT_MODULE, analyse, family_rules
from hubmerge.pipeline.run import MergeOptions, plan_spec, run_merge
from hubmerge.spec import parse_spec

# family -> {module: (layers, config key of the count)}: facts of the tiny configs in arch_models.py
EXPECTED = {
    "gemma3": {"text_decoder": (4, "text_config.num_hidden_layers"), "multi_modal_projector": (0, None),
               "vision_tower": (3, "vision_config.num_hidden_layers")},
    "qwen2_vl": {"text_decoder": (4, "text_config.num_hidden_layers"), "multi_modal_projector": (2, None),
                 "vision_tower": (3, "vision_config.depth")},
    "qwen2_5_vl": {"text_decoder": (4, "text_config.num_hidden_layers"), "multi_modal_projector": (2, None),
                   "vision_tower": (3, "vision_config.depth")},
    "qwen3_vl": {"text_decoder": (4, "text_config.num_hidden_layers"), "multi_modal_projector": (3, None),
                 "vision_tower": (3, "vision_config.depth")},
    "qwen3_vl_moe": {"text_decoder": (4, "text_config.num_hidden_layers"), "multi_modal_projector": (3, None),
                     "vision_tower": (3, "vision_config.depth")},
    "mistral3": {"text_decoder": (4, "text_config.num_hidden_layers"), "multi_modal_projector": (0, None),
                 "vision_tower": (3, "vision_config.num_hidden_layers")},
    "llama4": {"text_decoder": (4, "text_config.num_hidden_layers"), "multi_modal_projector": (0, None),
               "vision_model": (3, "vision_config.num_hidden_layers")},
    "llava": {"text_decoder": (4, "text_config.num_hidden_layers"), "multi_modal_projector": (0, None),
              "vision_tower": (3, "vision_config.num_hidden_layers")},
    "t5": {"decoder": (2, "num_decoder_layers"), "encoder": (3, "num_layers"), "shared": (0, None)},
    "whisper": {"decoder": (2, "decoder_layers"), "encoder": (3, "encoder_layers")},
}


def _layout(folder: Path):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    return names, analyse(names, json.loads((folder / "config.json").read_text()), model=folder.name)


def test_table_covers_every_architecture_mergekit_defines():
    data = Path(mergekit.__file__).parent
    defined = {a for f in (data / "_data" / "architectures").glob("*.json") for a in json.loads(f.read_text())["architectures"]}
    defined |= set(re.findall(r'ARCHITECTURE_NAME: ClassVar\[str\] = "(\w+)"',
                              (data / "architecture" / "moe_defs.py").read_text()))
    assert len(defined) > 50
    assert sorted(defined - set(family_rules())) == []


@pytest.mark.parametrize("family", sorted(EXPECTED) + ["gemma3-native", "qwen2_vl-native"])
def test_modules_of_families_built_by_transformers(multimodal_models, family):
    names, layout = _layout(multimodal_models[family] / "m0")
    expected = EXPECTED[family.removesuffix("-native")]
    assert layout.family is not None and layout.names == list(expected)
    for m in layout.modules:
        assert (m.num_layers, m.count_key) == expected[m.name]
    owned = [n for m in layout.modules for n in m.tensor_names]
    assert sorted(owned) == sorted(names)  # every tensor in exactly one module


def test_which_tensors_come_before_the_layers(multimodal_models):
    _, layout = _layout(multimodal_models["mistral3"] / "m0")
    vision = layout.module("vision_tower")
    assert vision.pre == ("vision_tower.ln_pre.weight", "vision_tower.patch_conv.weight") and vision.post == ()
    text = layout.module("text_decoder")
    assert text.pre == ("language_model.model.embed_tokens.weight",)
    assert text.post == ("language_model.model.norm.weight",)
    _, qwen = _layout(multimodal_models["qwen2_vl"] / "m0")
    projector = qwen.module("multi_modal_projector")  # mergekit plans its MLP once per (fixed) layer
    assert projector.pre == ("visual.merger.ln_q.bias", "visual.merger.ln_q.weight")
    assert len(projector.every_layer) == 4 and all(".mlp." in n for n in projector.every_layer)


def test_unknown_family_is_guessed_as_mergekit_infers(multimodal_models, tmp_path):
    """No rule: one module per stack (named by its prefix, as mergekit names inferred modules) plus 'default'."""
    names, _ = _layout(multimodal_models["qwen2_5_vl"] / "m0")
    config = json.loads((multimodal_models["qwen2_5_vl"] / "m0" / "config.json").read_text())
    config["architectures"] = ["SomeNewVLForConditionalGeneration"]
    layout = analyse(names, config, model="new")
    assert layout.family is None and layout.notes
    got = {m.name: (m.num_layers, m.count_key) for m in layout.modules}
    assert got == {"model.layers": (4, "text_config.num_hidden_layers"), "visual.blocks": (3, "vision_config.depth"),
                   "visual.merger.mlp": (3, None), DEFAULT_MODULE: (0, None)}
    assert not layout.module("visual.merger.mlp").layer_tensors(1)  # mlp.0 and mlp.2: a stack with a gap
    default = layout.module(DEFAULT_MODULE)
    assert default.post == () and "lm_head.weight" in default.pre  # mergekit: inferred loose weights come first


def test_single_stack_text_model_without_a_rule(tmp_path):
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)]
    layout = analyse(names, {"architectures": ["BrandNewForCausalLM"], "text_config": {"num_hidden_layers": 3}},
                     model="x")
    (m,) = layout.modules
    assert (m.name, m.num_layers, m.count_key) == (DEFAULT_MODULE, 3, "text_config.num_hidden_layers")
    assert set(m.pre) == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}


# --- validate, the config, bad input -----------------------------------------------------------------------------

def _write(root: Path, name: str, doc: dict | str) -> Path:
    path = root / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = cli_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_prints_the_modules_and_plans_each(multimodal_models, capsys):
    root = multimodal_models["qwen2_5_vl"]
    spec = _write(root, "validate.yml", {"merge_method": "passthrough", "modules": {
        "text_decoder": {"slices": [{"sources": [{"model": "m0", "layer_range": [0, 3]}]},
                                    {"sources": [{"model": "m1", "layer_range": [1, 4]}]}]},
        "vision_tower": {"slices": [{"sources": [{"model": "m1", "layer_range": [0, 2]}]}]}}})
    code, out, err = _cli(capsys, "validate", str(spec))
    assert code == 0, err
    lines = out.splitlines()
    assert "modules (rule for Qwen2_5_VLForConditionalGeneration):" in lines
    assert any(re.fullmatch(r"\s+text_decoder\s+4 -> 6 layers \(text_config.num_hidden_layers\), 75 tensors", x)
               for x in lines), out
    assert any(re.fullmatch(r"\s+vision_tower\s+3 -> 2 layers \(vision_config.depth\), 25 tensors", x) for x in lines)
    assert any(re.fullmatch(r"\s+multi_modal_projector\s+2 layers, 5 tensors, copied from m0", x) for x in lines)
    assert " [vision_tower]" in lines and "visual.blocks.1.attn.proj.weight" in out and "visual.blocks.2." not in out
    code, out, _ = _cli(capsys, "validate", str(spec), "--json")
    modules = {m["name"]: m for m in json.loads(out)["modules"]}
    assert modules["text_decoder"]["layers"] == 6 and modules["multi_modal_projector"]["copied_from"] == "m0"


def test_validate_plans_gradients_per_module(multimodal_models, capsys):
    """Without modules:, each stack has its own layer positions: t runs 0..1 over the encoder's 3 layers and over
    the decoder's 2 (Whisper, which mergekit 0.1.5 cannot merge)."""
    root = multimodal_models["whisper"]
    spec = _write(root, "slerp.yml", {"merge_method": "slerp", "base_model": "m0", "models": [{"model": "m1"}],
                                      "parameters": {"t": [{"filter": "fc1", "value": [0.0, 1.0]}, {"value": 0.5}]}})
    code, out, err = _cli(capsys, "validate", str(spec), "--json")
    assert code == 0, err
    t = {p["name"]: p["params"]["t"] for p in json.loads(out)["plan"]}
    assert [t[f"model.encoder.layers.{i}.fc1.weight"] for i in range(3)] == [0.0, 0.5, 1.0]
    assert [t[f"model.decoder.layers.{i}.fc1.weight"] for i in range(2)] == [0.0, 1.0]
    assert t["model.encoder.conv1.weight"] == 0.5 and t["model.decoder.layers.1.fc2.weight"] == 0.5


@pytest.mark.parametrize("doc, path, words", [
    ({"merge_method": "linear", "modules": {"vision": {"models": [{"model": "m0", "parameters": {"weight": 1}}]}}},
     "modules.vision", "has no module 'vision'"),
    ({"merge_method": "passthrough", "modules": {"text_decoder": {"slices": [
        {"sources": [{"model": "m0", "layer_range": [2, 6]}]}]}}},
     "modules.text_decoder.slices[0].sources[0].layer_range", "goes past the 4 layers of module 'text_decoder'"),
    ({"merge_method": "linear", "models": [{"model": "m0", "parameters": {"weight": 1}}],
      "modules": {"text_decoder": {"models": [{"model": "m1", "parameters": {"weight": 1}}]}}},
     "models", "'modules' and top-level 'models' cannot be mixed"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "m0", "layer_range": [0, 2]}]}]},
     "slices", "several modules"),
    ({"merge_method": "linear", "modules": {"text_decoder": {"parameters": {"weight": 1}}}},
     "modules.text_decoder", "needs exactly one of 'models' or 'slices'"),
])
def test_bad_module_specs_name_the_yaml_path(multimodal_models, capsys, doc, path, words):
    spec = _write(multimodal_models["mistral3"], "bad.yml", doc)
    code, out, err = _cli(capsys, "validate", str(spec))
    assert code == 2 and "Traceback" not in err
    first = err.splitlines()[0]
    assert first.startswith(f"error: {path}: ") and words in first, err
    assert len(err.strip().splitlines()) <= 2  # the message and at most a hint


def test_guessed_modules_are_named_in_the_error(multimodal_models, tmp_path, capsys):
    root = tmp_path / "unknown"
    for name in ("m0", "m1"):
        (root / name).mkdir(parents=True)
        src = multimodal_models["qwen2_5_vl"] / name
        (root / name / "model.safetensors").symlink_to(src / "model.safetensors")
        config = json.loads((src / "config.json").read_text())
        config["architectures"] = ["SomeNewVLForConditionalGeneration"]
        (root / name / "config.json").write_text(json.dumps(config))
    spec = _write(root, "bad.yml", {"merge_method": "linear", "modules": {
        "text_decoder": {"models": [{"model": "m0", "parameters": {"weight": 1}}]}}})
    code, _, err = _cli(capsys, "validate", str(spec))
    assert code == 2 and err.startswith("error: modules.text_decoder: the model has no module 'text_decoder'")
    assert "'model.layers' (4 layers)" in err or "model.layers (4 layers)" in err
    assert "guessed from tensor names" in err


def test_passthrough_changing_layer_counts_rewrites_the_config(multimodal_models, tmp_path):
    """Llama 4: 6 text layers from two slices, 2 vision layers; layer lists follow the layers taken (mergekit 0.1.5
    leaves them as they were, so its output does not load); the projector, left out, is copied from the base."""
    root = multimodal_models["llama4"]
    text = json.dumps({"merge_method": "passthrough", "modules": {
        "text_decoder": {"slices": [{"sources": [{"model": "m0", "layer_range": [0, 3]}]},
                                    {"sources": [{"model": "m1", "layer_range": [1, 4]}]}]},
        "vision_model": {"slices": [{"sources": [{"model": "m2", "layer_range": [1, 3]}]}]}}})
    out = tmp_path / "out"
    run_merge(parse_spec(text), out, MergeOptions(base_dir=root, show_progress=False))
    config = json.loads((out / "config.json").read_text())
    source = json.loads((root / "m0" / "config.json").read_text())
    origin = [0, 1, 2, 1, 2, 3]
    assert config["text_config"]["num_hidden_layers"] == 6 and config["vision_config"]["num_hidden_layers"] == 2
    for key in ("layer_types", "no_rope_layers"):
        assert config["text_config"][key] == [source["text_config"][key][i] for i in origin]
    assert config["text_config"]["moe_layers"] == [i for i, o in enumerate(origin) if o in source["text_config"]["moe_layers"]]
    got, m0, m1, m2 = (load_folder(p) for p in (out, root / "m0", root / "m1", root / "m2"))
    prefix = "language_model.model.layers"
    for out_layer, (model, layer) in enumerate([(m0, 0), (m0, 1), (m0, 2), (m1, 1), (m1, 2), (m1, 3)]):
        names = [n for n in model if n.startswith(f"{prefix}.{layer}.")]
        assert names and all(torch.equal(got[n.replace(f".{layer}.", f".{out_layer}.", 1)], model[n]) for n in names)
    assert torch.equal(got["vision_model.model.layers.0.mlp.fc1.weight"], m2["vision_model.model.layers.1.mlp.fc1.weight"])
    assert "vision_model.model.layers.2.mlp.fc1.weight" not in got
    assert torch.equal(got["multi_modal_projector.linear_1.weight"], m0["multi_modal_projector.linear_1.weight"])
    assert torch.equal(got["language_model.model.norm.weight"], m1["language_model.model.norm.weight"])  # last slice's
    model, info = load_checked(out)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert forward_finite(model)


def test_flat_and_nested_layer_counts_both_follow(multimodal_models, tmp_path):
    """Qwen2-VL as published keeps num_hidden_layers at the top level and in text_config: both are updated."""
    root = multimodal_models["qwen2_vl"]
    spec = parse_spec(json.dumps({"merge_method": "passthrough", "modules": {
        "text_decoder": {"slices": [{"sources": [{"model": "m0", "layer_range": [0, 2]}]}]}}}))
    plan = plan_spec(spec, base_dir=root)
    try:
        (text,) = [m for m in plan.modules if m.name == "text_decoder"]
        assert text.count_keys == ("text_config.num_hidden_layers", "num_hidden_layers")
    finally:
        for m in plan.models:
            m.close()
    out = tmp_path / "out"
    run_merge(spec, out, MergeOptions(base_dir=root, show_progress=False))
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == config["text_config"]["num_hidden_layers"] == 2
    assert config["text_config"]["layer_types"] == ["full_attention"] * 2
    model, info = load_checked(out)
    assert not info["missing_keys"] and not info["unexpected_keys"] and forward_finite(model)


@pytest.mark.parametrize("family, modules", [
    ("whisper", {"encoder": [[0, 2], [1, 3]], "decoder": [[1, 2]]}),
    ("qwen2_vl-native", {"text_decoder": [[0, 3], [2, 4]], "vision_tower": [[0, 2]]}),
    ("gemma3-native", {"text_decoder": [[0, 2]], "vision_tower": [[0, 3], [1, 3]]}),
    ("llava", {"text_decoder": [[0, 3], [1, 4]], "vision_tower": [[1, 3]]}),
])
def test_frankenmerges_mergekit_cannot_read(multimodal_models, tmp_path, family, modules):
    """Whisper, and Qwen2-VL and Gemma 3 as transformers 5 writes them: mergekit 0.1.5 stops on them (on LLaVA it
    writes no text model); hubmerge's per-module frankenmerges load, with each module's layer count where the
    config keeps it."""
    root = multimodal_models[family]
    doc = {"merge_method": "passthrough", "modules": {
        name: {"slices": [{"sources": [{"model": f"m{i}", "layer_range": r}]} for i, r in enumerate(ranges)]}
        for name, ranges in modules.items()}}
    out = tmp_path / "out"
    result = run_merge(parse_spec(json.dumps(doc)), out, MergeOptions(base_dir=root, show_progress=False))
    config = json.loads((out / "config.json").read_text())
    for m in result.plan.modules:
        if m.name in modules:
            assert m.num_layers == sum(b - a for a, b in modules[m.name])
            assert all(json_path(config, key) == m.num_layers for key in m.count_keys) and m.count_keys
    model, info = load_checked(out)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert forward_finite(model)


def json_path(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("model_type, arch, change", [
    ("cohere", "CohereForCausalLM", {"use_qk_norm": False}),  # mergekit's definition wants q/k norms
    ("falcon", "FalconForCausalLM", {"tie_word_embeddings": True}),  # ... and an untied head
])
def test_text_variants_mergekit_cannot_read(tmp_path, model_type, arch, change):
    from arch_models import build, tiny_text_config

    for seed in (0, 1):
        config = tiny_text_config(model_type, arch)
        for key, value in change.items():
            setattr(config, key, value)
        build(tmp_path / f"m{seed}", config, arch, seed)
    text = """merge_method: passthrough
slices:
  - sources: [{model: m0, layer_range: [0, 2]}]
  - sources: [{model: m1, layer_range: [1, 3]}]
"""
    run_merge(parse_spec(text), tmp_path / "out", MergeOptions(base_dir=tmp_path, show_progress=False))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 4
    model, info = load_checked(tmp_path / "out")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert forward_finite(model)
