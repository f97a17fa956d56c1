"""Tokenizer alignment against mergekit 0.1.5: the same spec through mergekit-yaml and hubmerge, over models
whose vocabularies differ in size, order and added tokens. Tensors bitwise, vocabularies equal."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_same_tensors, load_folder, run_mergekit
from tokenizer_models import SPECIALS, vocab_model, words
from transformers import AutoTokenizer

from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec import parse_spec

pytestmark = pytest.mark.mergekit

if shutil.which("mergekit-yaml") is None and not Path(sys.executable).with_name("mergekit-yaml").exists():
    pytest.skip("mergekit 0.1.5 is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab-models")
    # base: 34 tokens. chat: the same words in reverse order, two new words and an added special token.
    # code: fewer words, one word chat also has (x1) and one nobody else has (y0).
    vocab_model(root / "base", SPECIALS + words(30), seed=1)
    vocab_model(root / "chat", SPECIALS + words(30)[::-1] + ["x0", "x1"], seed=2, added=("<|im_start|>",))
    vocab_model(root / "code", SPECIALS + words(20) + ["x1", "y0"], seed=3)
    vocab_model(root / "base16", SPECIALS + words(30), seed=1, dtype="float16")
    vocab_model(root / "chat16", SPECIALS + words(24)[::-1] + ["x0"], seed=4, dtype="float16")
    return root


THREE = """
models:
  - model: base
    parameters: {weight: 0.5}
  - model: chat
    parameters: {weight: 0.3}
  - model: code
    parameters: {weight: 0.2}
"""
SPARSE = THREE.replace("0.5}", "0.5, density: 0.7}").replace("0.3}", "0.3, density: 0.6}").replace(
    "0.2}", "0.2, density: 0.8}")

SPECS = {
    # Every output token exists in base; code lacks w20..w29 and takes base's rows for them.
    "base_linear": "merge_method: linear\nbase_model: base\n" + THREE + "tokenizer_source: base\n",
    # x0 only in chat (chat's row), y0 only in code, x1 in chat and code but not base (their mean).
    "union_ties": "merge_method: ties\nbase_model: base\n" + SPARSE + "tokenizer_source: union\n",
    # No base model: rows missing from a model come from the only model that has them, else the mean.
    "union_no_base": "merge_method: linear\n" + THREE + "tokenizer:\n  source: union\n",
    # The output vocabulary is chat's (reversed ids, added token); base lacks x0, x1 and <|im_start|>.
    "model_task_arithmetic": "merge_method: task_arithmetic\nbase_model: base\n" + THREE + "tokenizer_source: chat\n",
    # tokens: a row from a model, forced rows of other tokens, zeros for a new token; padded rows.
    "tokens_overrides": "merge_method: linear\nbase_model: base\n" + THREE + """
tokenizer:
  source: chat
  tokens:
    <|im_start|>: {source: {kind: model_token, model: base, token: </s>}}
    x1: {source: chat}
    w3: {source: {kind: model_token, model: chat, token: x0}, force: true}
    w5: {source: code, force: true}
    w7: {source: {kind: model_token, model: code, token_id: 2}, force: true}
    <fresh>: {source: {kind: zero}}
  pad_to_multiple_of: 16
""",
    # fp16 inputs computed in fp32, slerp over two models of different sizes, union padded to 8.
    "slerp_fp16_union_padded": """
merge_method: slerp
base_model: base16
models:
  - model: base16
  - model: chat16
parameters: {t: 0.3}
dtype: float32
tokenizer: {source: union, pad_to_multiple_of: 8}
""",
}

# Output vocabularies whose order mergekit takes from a hash map (union): compared token by token.
UNORDERED = {"union_ties", "union_no_base", "slerp_fp16_union_padded"}


def _vocab(folder: Path) -> dict[str, int]:
    return AutoTokenizer.from_pretrained(str(folder)).get_vocab()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_tokenizer_alignment_matches_mergekit(models, tmp_path, name):
    text = SPECS[name]
    spec_path = models / f"{name}.yml"
    spec_path.write_text(text)
    theirs, ours = tmp_path / "mergekit", tmp_path / "hubmerge"
    run_mergekit(spec_path, theirs)
    run_merge(parse_spec(text), ours, MergeOptions(base_dir=models, show_progress=False))

    v_ours, v_theirs = _vocab(ours), _vocab(theirs)
    assert set(v_ours) == set(v_theirs)
    config_ours = json.loads((ours / "config.json").read_text())
    config_theirs = json.loads((theirs / "config.json").read_text())
    assert config_ours["vocab_size"] == config_theirs["vocab_size"]
    t_ours, t_theirs = load_folder(ours), load_folder(theirs)
    if name not in UNORDERED:
        assert v_ours == v_theirs
        assert_same_tensors(t_ours, t_theirs)
        return
    # Same tokens, maybe other ids: put mergekit's rows in our token order, then compare bitwise.
    rows = config_ours["vocab_size"]
    order = [v_theirs[t] for t in sorted(v_ours, key=v_ours.__getitem__)]
    assert sorted(t_ours) == sorted(t_theirs)
    for tensor, mine in t_ours.items():
        other = t_theirs[tensor]
        if mine.shape[0] == rows:
            assert torch.equal(mine[: len(order)], other[order]), tensor
            # padding rows: the mean of the token rows, whose summation order follows the ids
            torch.testing.assert_close(mine[len(order):], other[len(order):], rtol=1e-2, atol=1e-4)
        else:
            assert torch.equal(mine, other), tensor


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="mergekit 0.1.5 bug: with source: base, a tokens: entry the base lacks is added to the "
                          "base tokenizer object itself, so the base's permutation misses it (KeyError). hubmerge "
                          "merges it (tests/merge/test_tokenizer.py::test_new_token_with_base_source)")
def test_new_token_with_base_source_mergekit_fails(models, tmp_path):
    spec_path = models / "base_new_token.yml"
    spec_path.write_text("merge_method: linear\nbase_model: base\n" + THREE
                         + "tokenizer:\n  source: base\n  tokens:\n    <fresh>: {source: {kind: zero}}\n")
    run_mergekit(spec_path, tmp_path / "mergekit")
