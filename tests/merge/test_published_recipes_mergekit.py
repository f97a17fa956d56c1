"""Published recipe forms against mergekit 0.1.5: mergekit-mega's out_path stages, the legacy
``tokenizer_source: model:...`` spelling, a tokenizer donor that is no input, arcee_fusion without out_dtype, and
spellings model cards use (layer_range under models, YAML merge keys, other methods' parameters, the dict form of
model references). Every reference merge runs in one mergekit-multi process; tensors are compared bitwise."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import assert_same_tensors, load_folder, run_mergekit_multi
from tokenizer_models import SPECIALS, vocab_model, words
from transformers import AutoTokenizer

from hubmerge.pipeline.run import MergeOptions
from hubmerge.pipeline.stages import run_stages
from hubmerge.spec.stages import parse_stages

pytestmark = pytest.mark.mergekit

if shutil.which("mergekit-multi") is None and not Path(sys.executable).with_name("mergekit-multi").exists():
    pytest.skip("mergekit 0.1.5 is not installed", allow_module_level=True)

TWO = """
models:
  - model: base
    parameters: {weight: 0.6}
  - model: ft1
    parameters: {weight: 0.4}
"""
SLERP = """
merge_method: slerp
base_model: base
slices:
  - sources:
      - {model: base, layer_range: [0, 2]}
      - {model: ft1, layer_range: [0, 2]}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float16
"""
TIES = """
merge_method: ties
base_model: base
models:
  - model: {first}
    parameters: {{density: [1, 0.7, 0.1], weight: 1.0}}
  - model: ft2
    parameters:
      density: 0.33
      weight: [{{filter: mlp, value: 0.5}}, {{value: 0}}]
parameters: {{normalize: true, int8_mask: true}}
dtype: float16
"""

# name -> (what mergekit-multi runs, what hubmerge runs: the published spelling)
CASES = {
    "donor": ("merge_method: linear\nbase_model: base\n" + TWO + "tokenizer_source: donor\n",
              "merge_method: linear\nbase_model: base\n" + TWO + "tokenizer_source: model:donor\n"),
    "donor_block_union_inputs": (
        "merge_method: task_arithmetic\nbase_model: base\n" + TWO.replace("ft1", "chat")
        + "tokenizer:\n  source: donor\n  pad_to_multiple_of: 8\n",
        "merge_method: task_arithmetic\nbase_model: base\n" + TWO.replace("ft1", "chat")
        + "tokenizer:\n  source: model:donor\n  pad_to_multiple_of: 8\n"),
    # A donor folder with only its tokenizer files (no config.json, no weights), as tokenizer repos are.
    "donor_tokenizer_only": ("merge_method: linear\nbase_model: base\n" + TWO + "tokenizer_source: donor-tok\n",) * 2,
    "legacy_model_prefix_input": ("merge_method: linear\nbase_model: base\n" + TWO.replace("ft1", "chat")
                                  + "tokenizer_source: chat\n",
                                  "merge_method: linear\nbase_model: base\n" + TWO.replace("ft1", "chat")
                                  + "tokenizer_source: model:chat\n"),
    "fusion": ("merge_method: arcee_fusion\nbase_model: base\nmodels:\n  - model: base\n  - model: ft1\n",) * 2,
    "fusion_dtype": ("merge_method: arcee_fusion\nbase_model: base\nmodels:\n  - model: base\n  - model: ft1\n"
                     "dtype: bfloat16\n",) * 2,
    "layer_range_under_models": (
        "merge_method: slerp\nbase_model: base\nmodels:\n  - model: base\n    layer_range: [0, 2]\n"
        "  - model: ft1\n    layer_range: [0, 2]\nparameters: {t: 0.3}\n",) * 2,
    "merge_keys_and_other_parameters": (
        "merge_method: linear\nmodels:\n  - model: base\n    parameters: &w {weight: 0.5}\n  - model: ft1\n"
        "    parameters:\n      <<: *w\n      weight: 0.2\nparameters: {normalize: true, int8_mask: true}\n",) * 2,
    "dict_form_refs": ("merge_method: linear\nmodels:\n  - model: {model: {path: base}}\n    parameters: {weight: 0.3}\n"
                       "  - model: {model: {path: ft1, revision: null}, lora: null}\n    parameters: {weight: 0.7}\n",) * 2,
}


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """(models root, mergekit-multi output root) with every reference merge done in one process."""
    root = tmp_path_factory.mktemp("published")
    vocab = SPECIALS + words(30)
    vocab_model(root / "base", vocab, seed=1)
    vocab_model(root / "ft1", vocab, seed=2)
    vocab_model(root / "ft2", vocab, seed=3)
    vocab_model(root / "chat", SPECIALS + words(30)[::-1] + ["x0", "x1"], seed=4, added=("<|im_start|>",))
    # The donor shares some words, adds two, reorders the rest and adds a special token no input has.
    vocab_model(root / "donor", SPECIALS + words(10) + ["x1", "z0", "z1"] + words(30)[10:][::-1], seed=5,
                added=("<|im_end|>",))
    (root / "donor-tok").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(root / "donor" / name, root / "donor-tok" / name)
    stages = {f"r-{name}": theirs for name, (theirs, _) in CASES.items()}  # stage names no model has
    stages["mega-step1"] = SLERP
    stages["mega-step2"] = TIES.format(first="mega-step1")
    out = root / "mergekit"
    run_mergekit_multi(stages, root, out)
    return root, out


def _ours(root: Path, text: str, out: Path) -> Path:
    run_stages(parse_stages(text), out, MergeOptions(base_dir=root, show_progress=False, max_shard_size=200_000))
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_published_spelling_merges_like_mergekit(merged, tmp_path, name):
    root, theirs = merged
    ours = _ours(root, CASES[name][1], tmp_path / name)
    theirs = theirs / f"r-{name}"
    assert_same_tensors(load_folder(ours), load_folder(theirs))
    config, reference = (json.loads((folder / "config.json").read_text()) for folder in (ours, theirs))
    assert config["vocab_size"] == reference["vocab_size"]
    assert config.get("torch_dtype", config.get("dtype")) == reference.get("dtype", reference.get("torch_dtype"))
    if "tokenizer" in CASES[name][1]:
        assert AutoTokenizer.from_pretrained(ours).get_vocab() == AutoTokenizer.from_pretrained(theirs).get_vocab()


def test_arcee_fusion_is_written_in_float32_as_mergekit_writes_it(merged, tmp_path):
    root, theirs = merged
    ours = load_folder(_ours(root, CASES["fusion_dtype"][1], tmp_path / "fusion"))
    assert {str(t.dtype) for t in ours.values()} == {"torch.float32"}
    ours = load_folder(_ours(root, CASES["fusion"][1] + "out_dtype: bfloat16\n", tmp_path / "fusion16"))
    assert {str(t.dtype) for t in ours.values()} == {"torch.bfloat16"}


def test_a_mega_file_with_out_paths_merges_like_its_mergekit_multi_twin(merged, tmp_path):
    root, theirs = merged
    mega = (SLERP + "out_path: ./models/gradient-slerp\n---\n"
            + TIES.format(first="./models/gradient-slerp") + "out_path: ./models/gradient-slerp-ties\n")
    ours = _ours(root, mega, tmp_path / "out")
    assert_same_tensors(load_folder(ours), load_folder(theirs / "mega-step2"))
    # The out_paths only named the stages: nothing was written there, and the scratch folder is gone.
    assert not (root / "models").exists() and not (Path.cwd() / "models" / "gradient-slerp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_tokenizer_only_hub_repo_is_a_donor_too(merged, tmp_path, hub, repo_id_factory):
    from helpers import publish_folder

    from hubmerge.hub import Hub

    root, theirs = merged
    repo = repo_id_factory()
    publish_folder(hub, repo, root / "donor-tok")
    text = CASES["donor_tokenizer_only"][1].replace("donor-tok", f"model:{repo}")
    out = tmp_path / "hub-donor"
    run_stages(parse_stages(text), out, MergeOptions(base_dir=root, show_progress=False), hub=Hub(endpoint=hub.url))
    assert_same_tensors(load_folder(out), load_folder(theirs / "r-donor_tokenizer_only"))
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(root / "donor-tok").get_vocab()
