"""Multimodal and encoder-decoder models, module by module, against mergekit 0.1.5.

The models are built by transformers (tests/merge/arch_models.py); every recipe of every family runs through one
``mergekit-multi`` process and through hubmerge, and the outputs are compared tensor by tensor (bitwise) and
config field by config field. Where mergekit 0.1.5 cannot merge a family (Whisper) or writes a broken model
(a module left out of ``modules:``, per-layer config lists not re-indexed), hubmerge's output is checked against
independent computations and by loading it with transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from arch_models import flat_config, forward_finite, load_checked
from helpers import load_folder, run_mergekit_multi

from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec import parse_spec

pytestmark = pytest.mark.mergekit

# The modules of each tiny family and their layer counts (facts of the configs in arch_models.py).
MODULES = {
    "gemma3": {"text_decoder": 4, "vision_tower": 3, "multi_modal_projector": 0},
    "qwen2_vl": {"text_decoder": 4, "vision_tower": 3, "multi_modal_projector": 2},
    "qwen2_5_vl": {"text_decoder": 4, "vision_tower": 3, "multi_modal_projector": 2},
    "qwen3_vl": {"text_decoder": 4, "vision_tower": 3, "multi_modal_projector": 3},
    "qwen3_vl_moe": {"text_decoder": 4, "vision_tower": 3, "multi_modal_projector": 3},
    "mistral3": {"text_decoder": 4, "vision_tower": 3, "multi_modal_projector": 0},
    "llama4": {"text_decoder": 4, "vision_model": 3, "multi_modal_projector": 0},
    "t5": {"encoder": 3, "decoder": 2, "shared": 0},
}
FAMILIES = sorted(MODULES)

LINEAR = """merge_method: linear
base_model: {f}/m0
models:
  - model: {f}/m0
    parameters: {{weight: 0.3}}
  - model: {f}/m1
    parameters: {{weight: [{{filter: mlp, value: 0.9}}, {{value: [0.2, 0.6]}}]}}
"""
SLERP = """merge_method: slerp
base_model: {f}/m0
models:
  - model: {f}/m0
  - model: {f}/m1
parameters:
  t: [{{filter: self_attn, value: [0, 0.5, 1]}}, {{filter: mlp, value: [1, 0.2]}}, {{value: [0.3, 0.7]}}]
"""
TIES = """merge_method: ties
base_model: {f}/m0
models:
  - model: {f}/m1
    parameters: {{weight: 0.7, density: [0.2, 0.8]}}
  - model: {f}/m2
    parameters: {{weight: [{{filter: attn, value: 0.5}}, {{value: 0.4}}], density: 0.5}}
parameters: {{normalize: true}}
"""


def _count_preserving_slices(f: str, n: int) -> list[dict]:
    """Two slices from two models that repeat a layer and drop the last, keeping the count (mergekit 0.1.5
    cannot save a config whose per-layer lists no longer match the count, so the count stays)."""
    half = (n + 1) // 2
    second = [half - 1, n - 1] if n > 2 else [1, 2]  # T5: only layer 0 has the relative attention bias
    return [{"sources": [{"model": f"{f}/m0", "layer_range": [0, half]}]},
            {"sources": [{"model": f"{f}/m1", "layer_range": second}]}]


def modules_spec(f: str, method: str, *, leave_out: str | None = None) -> str:
    modules = {}
    for i, (name, n) in enumerate(MODULES[f].items()):
        if name == leave_out:
            continue
        if method == "passthrough":
            modules[name] = ({"slices": _count_preserving_slices(f, n)} if n > 1
                             else {"models": [{"model": f"{f}/m{1 + i % 2}"}]})
        else:  # slerp, each module with parameters of its own, falling back to the top level's
            modules[name] = {"models": [{"model": f"{f}/m0"}, {"model": f"{f}/m1"}],
                             "parameters": {"t": [{"filter": "mlp", "value": [0.1 * (i + 1), 0.9]},
                                                  {"filter": "norm", "value": 0.25}]}}
    doc = {"merge_method": method, "modules": modules}
    if method != "passthrough":
        doc.update(base_model=f"{f}/m0", parameters={"t": 0.6})
    return yaml.safe_dump(doc, sort_keys=False)


def recipes(f: str) -> dict[str, str]:
    return {"linear": LINEAR.format(f=f), "slerp": SLERP.format(f=f), "ties": TIES.format(f=f),
            "modules_slerp": modules_spec(f, "slerp"), "modules_passthrough": modules_spec(f, "passthrough"),
            "modules_partial": modules_spec(f, "slerp", leave_out=list(MODULES[f])[-1])}


def _unknown_family(root: Path) -> None:
    """Qwen2.5-VL under an architecture name neither tool has a definition for: both guess its stacks from names."""
    for name in ("m0", "m1"):
        src, dst = root / "qwen2_5_vl" / name, root / "unknown" / name
        dst.mkdir(parents=True, exist_ok=True)
        (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
        config = json.loads((src / "config.json").read_text())
        config["architectures"] = ["SomeNewVLForConditionalGeneration"]
        (dst / "config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def merged(multimodal_models, tmp_path_factory):
    """Every recipe of every family, merged by mergekit-multi (one process) and by hubmerge."""
    root = next(iter(multimodal_models.values())).parent
    _unknown_family(root)
    stages = {f"{f}-{name}": text for f in FAMILIES for name, text in recipes(f).items()}
    stages["unknown-slerp"] = SLERP.format(f="unknown")
    stages["unknown-linear"] = LINEAR.format(f="unknown")
    theirs = tmp_path_factory.mktemp("mergekit")
    run_mergekit_multi(stages, root, theirs)
    ours = tmp_path_factory.mktemp("hubmerge")
    for name, text in stages.items():
        run_merge(parse_spec(text), ours / name, MergeOptions(base_dir=root, show_progress=False))
    for name in ("slerp", "modules_passthrough"):  # Gemma 3 as transformers 5 writes it (mergekit cannot read it)
        text = recipes("gemma3")[name].replace("gemma3/", "gemma3-native/")
        run_merge(parse_spec(text), ours / f"gemma3-native-{name}", MergeOptions(base_dir=root, show_progress=False))
    return root, ours, theirs


# Config entries hubmerge re-indexes on purpose when layers repeat or drop (mergekit 0.1.5 leaves them as they were,
# describing layers the output no longer has): {(family, recipe): {path: value}}.
REINDEXED = {
    ("llama4", "modules_passthrough"): {"text_config.moe_layers": [1, 2], "text_config.no_rope_layers": [1, 1, 1, 1],
                                        "text_config.layer_types": ["chunked_attention"] * 4},
    ("qwen2_5_vl", "modules_passthrough"): {"vision_config.fullatt_block_indexes": []},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_bitwise_and_config_equal(merged, family):
    root, ours, theirs = merged
    for name in recipes(family):
        stage = f"{family}-{name}"
        a, b = load_folder(ours / stage), load_folder(theirs / stage)
        if name == "modules_partial":
            # mergekit leaves the module out (its output does not load); hubmerge copies it from the base
            left_out = sorted(set(a) - set(b))
            base = load_folder(root / family / "m0")
            assert left_out and all(torch.equal(a[k], base[k]) for k in left_out), stage
            a = {k: v for k, v in a.items() if k in b}
        assert sorted(a) == sorted(b), (stage, set(a) ^ set(b))
        differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
        assert not differ, f"{stage}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:4]}"
        ca = flat_config(json.loads((ours / stage / "config.json").read_text()))
        cb = flat_config(json.loads((theirs / stage / "config.json").read_text()))
        expected = REINDEXED.get((family, name), {})
        diffs = {k: (ca.get(k), cb.get(k)) for k in set(ca) | set(cb) if ca.get(k) != cb.get(k)}
        assert set(diffs) == set(expected), (stage, diffs)
        assert all(ca[k] == v for k, v in expected.items()), (stage, diffs)
        # the processor file comes from the base model (m0), else from the first model named (mergekit takes
        # the first of a set: an order that changes with the hash seed)
        processor = (ours / stage / "preprocessor_config.json").read_bytes()
        assert processor == (root / family / "m0" / "preprocessor_config.json").read_bytes(), stage
        if name != "modules_passthrough" and family != "t5":  # mergekit copies processor files for VL families
            assert processor == (theirs / stage / "preprocessor_config.json").read_bytes(), stage


def test_unknown_family_guessed_as_mergekit_infers(merged):
    """No definition in either tool: each stack of layers on its own positions, from tensor names alone."""
    _, ours, theirs = merged
    for stage in ("unknown-slerp", "unknown-linear"):
        a, b = load_folder(ours / stage), load_folder(theirs / stage)
        assert sorted(a) == sorted(b)
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{stage}: {len(differ)} differ, e.g. {differ[:4]}"


def test_gemma3_as_transformers_writes_it(merged):
    """The same merges of the checkpoints transformers 5 writes (vision tower without 'vision_model.'): equal to
    mergekit's merges of the Hub layout, name for name."""
    _, ours, theirs = merged
    for name in ("slerp", "modules_passthrough"):
        native = load_folder(ours / f"gemma3-native-{name}")
        hub = load_folder(theirs / f"gemma3-{name}")
        renamed = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
                   for k, v in native.items()}
        assert sorted(renamed) == sorted(hub)
        assert all(torch.equal(renamed[k], hub[k]) for k in hub), name
    model, info = load_checked(ours / "gemma3-native-modules_passthrough")
    assert not info["missing_keys"] and not info["unexpected_keys"] and forward_finite(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_load_in_transformers(merged, family):
    _, ours, _ = merged
    for name in ("modules_passthrough", "modules_partial"):
        model, info = load_checked(ours / f"{family}-{name}")
        assert not info["missing_keys"] and not info["unexpected_keys"], (name, info)
        assert forward_finite(model), name
