"""Every text architecture mergekit 0.1.5 defines that transformers builds, merged by both tools.

The list comes from mergekit's own definitions (its ``_data/architectures``), so a family it adds is tested
without touching this file. Each family: two tiny models built by transformers, four recipes (linear with filters,
slerp with gradients and filters, ties, passthrough slices from both models), one ``mergekit-multi`` process
for all, bitwise comparison, config comparison, and hubmerge's frankenmerge loaded back by transformers.

Where mergekit 0.1.5 cannot merge a family as transformers 5 writes it (its definition names tensors the
checkpoint does not have), hubmerge's passthrough output is checked tensor by tensor against the layers it was
asked for, using mergekit's definition to tell the tensors before the layers from those after.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mergekit
import pytest
import torch
import transformers
from arch_models import build, flat_config, forward_finite, load_checked, tiny_text_config
from helpers import load_folder, run_mergekit_multi
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec import parse_spec

pytestmark = pytest.mark.mergekit

DEFINITIONS = Path(mergekit.__file__).parent / "_data" / "architectures"

# mergekit 0.1.5 fails on these as transformers 5.24 builds them (mergekit-yaml stops with the error below).
MERGEKIT_FAILS = {
    "BertForMaskedLM": "its definition wants bert.pooler.*, which BertForMaskedLM does not have",
    "BertModel": "a TypeError in its alias handling",
    "DistilBertModel": "its definition names tensors distilbert.*, DistilBertModel saves them without the prefix",
    "RobertaModel": "its definition names layers roberta.encoder.*, RobertaModel saves them without the prefix",
    "GPTNeoXForCausalLM": "its definition wants attention.bias buffers, which transformers 5 does not save",
    "GraniteMoeHybridForCausalLM": "its definition wants block_sparse_moe experts the tiny (dense) config lacks",
}


def text_families() -> dict[str, tuple[str, dict]]:
    """architecture -> (model type, mergekit's definition) for every single-module family transformers builds."""
    out = {}
    for path in sorted(DEFINITIONS.glob("*.json")):
        definition = json.loads(path.read_text())
        if definition.get("kind") == "modular":
            continue
        for arch in definition["architectures"]:
            if getattr(transformers, arch, None) is not None and definition["model_type"] in CONFIG_MAPPING:
                out[arch] = (definition["model_type"], definition)
    return out


FAMILIES = text_families()
RECIPES = {
    "linear": """merge_method: linear
models:
  - model: {f}/m0
    parameters: {{weight: 0.3}}
  - model: {f}/m1
    parameters: {{weight: [{{filter: mlp, value: 0.9}}, {{value: [0.2, 0.6]}}]}}
""",
    "slerp": """merge_method: slerp
base_model: {f}/m0
models:
  - model: {f}/m1
parameters:
  t: [{{filter: attn, value: [0, 0.5, 1]}}, {{filter: mlp, value: [1, 0.3]}}, {{value: 0.4}}]
""",
    "ties": """merge_method: ties
base_model: {f}/m0
models:
  - model: {f}/m1
    parameters: {{weight: 0.7, density: [0.2, 0.8]}}
""",
    # 3 layers in, 3 out (layer 1 twice, layer 2 dropped): mergekit cannot save a changed count with layer_types
    "passthrough": """merge_method: passthrough
slices:
  - sources: [{{model: {f}/m0, layer_range: [0, 2]}}]
  - sources: [{{model: {f}/m1, layer_range: [1, 2]}}]
""",
}
ORIGIN = [0, 1, 1]  # the passthrough's source layers


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for arch, (model_type, _) in FAMILIES.items():
        for seed in (0, 1):
            build(root / arch / f"m{seed}", tiny_text_config(model_type, arch), arch, seed)
    stages = {f"{arch}-{name}": text.format(f=arch) for arch in FAMILIES if arch not in MERGEKIT_FAILS
              for name, text in RECIPES.items()}
    theirs = root / "mergekit"
    run_mergekit_multi(stages, root, theirs)
    ours = root / "hubmerge"
    for arch in FAMILIES:
        for name, text in RECIPES.items():
            run_merge(parse_spec(text.format(f=arch)), ours / f"{arch}-{name}",
                      MergeOptions(base_dir=root, show_progress=False))
    return root, ours, theirs


@pytest.mark.parametrize("arch", [a for a in FAMILIES if a not in MERGEKIT_FAILS])
def test_family_bitwise_equal_to_mergekit(sweep, arch):
    root, ours, theirs = sweep
    source = flat_config(json.loads((root / arch / "m0" / "config.json").read_text()))
    for name in RECIPES:
        stage = f"{arch}-{name}"
        a, b = load_folder(ours / stage), load_folder(theirs / stage)
        assert sorted(a) == sorted(b), (stage, sorted(set(a) ^ set(b))[:6])
        differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
        assert not differ, f"{stage}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:4]}"
        ca = flat_config(json.loads((ours / stage / "config.json").read_text()))
        cb = flat_config(json.loads((theirs / stage / "config.json").read_text()))
        for key in set(ca) | set(cb):
            if ca.get(key) != cb.get(key):  # only per-layer lists, re-indexed onto the layers taken (mergekit keeps them)
                assert name == "passthrough" and ca[key] == [source[key][i] for i in ORIGIN], (stage, key)


def _is_pre(name: str, definition: dict) -> bool:
    """mergekit's definition lists the tensor before the layers (some definitions name them with a prefix the
    checkpoint lacks, or the other way round)."""
    names = {n for w in definition["pre_weights"] for n in [w["name"], *(w.get("aliases") or [])]}
    return any(n == name or n.endswith("." + name) or name.endswith("." + n) for n in names)


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_frankenmerge_is_the_layers_asked_for_and_loads(sweep, arch):
    """Independent of mergekit's output: layer i of the output is layer ORIGIN[i] of m0, m0, m1 (whatever that
    layer holds: Granite-hybrid and LFM2 mix layer kinds); tensors before the layers (mergekit's definition says
    which) come from the first slice's model, the others from the last's. MoE checkpoints are read in the fused
    layout (tests/merge/test_moe_mergekit.py), so their names are not the checkpoint's: only loading is checked."""
    root, ours, _ = sweep
    got = load_folder(ours / f"{arch}-passthrough")
    models = [load_folder(root / arch / "m0"), load_folder(root / arch / "m1")]
    expected = {}
    for which, model in enumerate(models):
        for name, tensor in model.items():
            match = re.search(r"(?:^|\.)(\d+)\.", name)
            if match is None:
                if which == (0 if _is_pre(name, FAMILIES[arch][1]) else 1):
                    expected[name] = tensor
                continue
            for out_layer, src in enumerate(ORIGIN):
                if src == int(match.group(1)) and which == (1 if out_layer == 2 else 0):
                    expected[name[:match.start(1)] + str(out_layer) + name[match.end(1):]] = tensor
    fused = any(".experts." in n and not re.search(r"\.experts\.\d+\.", n) for n in got)
    if not fused:
        assert sorted(got) == sorted(expected)
        assert [n for n in got if not torch.equal(got[n], expected[n])] == []
    model, info = load_checked(ours / f"{arch}-passthrough")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert forward_finite(model)
