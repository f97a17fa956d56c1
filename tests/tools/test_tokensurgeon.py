"""Tokenizer transplant against mergekit-tokensurgeon 0.1.5 (its default, OMP), against independent
computations for the other methods, and loaded back with transformers."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_folder
from tools.tool_models import run_mergekit_tokensurgeon, vocab_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from hubmerge.merge.vocab_match import match_vocabularies, normalized_vocab
from hubmerge.pipeline.tools import ToolRun, run_tool
from hubmerge.spec import parse_spec
from hubmerge.spec.frontmatter import split_front_matter

SHARED = [f"w{i}" for i in range(200)]
MODEL_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
DONOR_SPECIALS = {"bos_token": "<|begin|>", "eos_token": "<|end|>", "unk_token": "<|unk|>", "pad_token": "<|pad|>"}
MODEL_WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + SHARED + [f"m{i}" for i in range(40)]
DONOR_WORDS = ["<|unk|>", "<|pad|>", "<|begin|>", "<|end|>"] + [f"d{i}" for i in range(30)] + SHARED[::-1][:180]
# Tolerance for approximated rows against mergekit's OMP, relative to the largest entry of the embedding:
# both pick the same atoms; the coefficients come from different float32 least-squares solvers (mergekit:
# its Gram-Schmidt R, ours: LAPACK). Measured: 1.1e-6.
OMP_TOLERANCE = 1e-5
HIDDEN = 128


@pytest.fixture(scope="module")
def ts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokensurgeon")
    # hidden 128 > k = 64 (mergekit's default), as in real models: the least-squares systems are well posed
    vocab_model(root / "model", MODEL_WORDS, seed=3, specials=MODEL_SPECIALS, hidden=HIDDEN)
    vocab_model(root / "donor", DONOR_WORDS, seed=4, specials=DONOR_SPECIALS, added=("<|im_start|>",), hidden=HIDDEN)
    result = run_tool(parse_spec("tokensurgeon: {model: model, donor: donor}\n"), root / "ours",
                      ToolRun(base_dir=root, show_progress=False))
    run_mergekit_tokensurgeon(root / "model", root / "donor", root / "mk")  # its defaults: omp, k=64
    return {"root": root, "result": result}


def _vocab(folder):
    return AutoTokenizer.from_pretrained(str(folder)).get_vocab()


def test_shared_rows_bitwise_and_new_rows_close_to_mergekit(ts):
    root = ts["root"]
    ours, theirs, model = load_folder(root / "ours"), load_folder(root / "mk"), load_folder(root / "model")
    model_vocab, donor_vocab = _vocab(root / "model"), _vocab(root / "donor")
    donor_to_model = {"<|begin|>": "<s>", "<|end|>": "</s>", "<|unk|>": "<unk>", "<|pad|>": "<pad>"}
    new = [t for t in donor_vocab if t not in model_vocab and t not in donor_to_model]
    assert sorted(new) == sorted([f"d{i}" for i in range(30)] + ["<|im_start|>"])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert ours[name].shape == (len(donor_vocab), HIDDEN) == theirs[name].shape
        for token, row in donor_vocab.items():
            source = donor_to_model.get(token, token)
            if source in model_vocab:  # shared (special tokens by their role): the model's own row, bit for bit
                assert torch.equal(ours[name][row], model[name][model_vocab[source]]), (name, token)
        rows = torch.tensor([donor_vocab[t] for t in new])
        scale = model[name].abs().max()
        diff = (ours[name][rows] - theirs[name][rows]).abs().max()
        assert diff <= OMP_TOLERANCE * scale, (name, float(diff))
        assert ours[name][rows].abs().max() > 0.1 * scale  # really approximated, not zeros
    for name, tensor in model.items():
        if name not in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[name], tensor), name


def test_output_loads_and_speaks_the_donor_tokenizer(ts):
    root = ts["root"]
    out = root / "ours"
    tok, donor = AutoTokenizer.from_pretrained(str(out)), AutoTokenizer.from_pretrained(str(root / "donor"))
    text = "w5 d3 w199 <|im_start|> w42"
    ids = tok(text)["input_ids"]
    assert ids == donor(text)["input_ids"] and tok.decode(ids) == donor.decode(ids)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(donor.get_vocab()) == model.get_input_embeddings().weight.shape[0]
    assert config["eos_token_id"] == donor.convert_tokens_to_ids("<|end|>")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape[-1] == len(donor.get_vocab()) and torch.isfinite(logits).all()


def test_card_counts(ts):
    meta, body = split_front_matter((ts["root"] / "ours" / "README.md").read_text())
    stats = meta["hubmerge"]["tokensurgeon"]
    assert stats == {"rows": 215, "copied": 184, "approximated": 31, "zero": 0, "method": "omp", "k": 64}
    assert "| copied from the model (shared tokens) | 184 |" in body
    assert "tokenizer donor" in body


@pytest.mark.parametrize("method", ["subword", "mean", "zero"])
def test_other_methods(ts, method, tmp_path):
    """subword: mean of the rows of the pieces the model's own tokenizer makes of the token's text; mean:
    mean of all rows; zero: zeros. Computed here independently."""
    root = ts["root"]
    run_tool(parse_spec(f"tokensurgeon: {{model: model, donor: donor, method: {method}}}\n"), tmp_path / "o",
             ToolRun(base_dir=root, show_progress=False))
    out, model = load_folder(tmp_path / "o"), load_folder(root / "model")
    model_tok, donor_vocab = AutoTokenizer.from_pretrained(str(root / "model")), _vocab(root / "donor")
    embed = model["model.embed_tokens.weight"]
    for token in ("d3", "<|im_start|>"):
        got = out["model.embed_tokens.weight"][donor_vocab[token]]
        if method == "zero":
            expected = torch.zeros_like(got)
        elif method == "mean":
            expected = embed.mean(dim=0)
        else:
            pieces = model_tok(token, add_special_tokens=False)["input_ids"]  # d3 -> <unk>; no Ġ/▁ here
            expected = embed[pieces].mean(dim=0)
        assert torch.allclose(got, expected, atol=1e-6), (method, token)


def test_word_start_markers_and_special_roles_match_across_families():
    """SentencePiece ▁hello and byte-level Ġhello are the same token; eos tokens match by role."""
    sp = {"<s>": 0, "</s>": 1, "▁hello": 2, "▁world": 3, "x": 4}
    bpe = {"<|endoftext|>": 0, "Ġhello": 1, "Ġthere": 2, "x": 3, "Ġworld": 4}
    model = normalized_vocab(sp, {"bos_token": "<s>", "eos_token": "</s>"})
    donor = normalized_vocab(bpe, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
    match = match_vocabularies(model, donor, donor_rows=5, out_rows=5)
    assert dict(match.copy) == {0: 0, 1: 2, 3: 4, 4: 3}  # <|endoftext|> is bos first (role order), like <s>
    assert match.approximate == (2,)  # Ġthere
