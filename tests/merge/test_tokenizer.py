"""Tokenizers and embeddings: vocabulary checks, fill rules against a reference written here, the read-path
re-indexing, output tokenizer/config files, chat templates and override errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_folder, run_cli
from safetensors.torch import load_file
from tokenizer_models import SPECIALS, vocab_model, words
from transformers import AutoTokenizer

from hubmerge.errors import PlanError, SpecError
from hubmerge.merge.executor import StreamingExecutor
from hubmerge.pipeline.run import MergeOptions, plan_spec, run_merge
from hubmerge.spec import parse_spec


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    vocab_model(root / "base", SPECIALS + words(30), seed=1)
    vocab_model(root / "chat", SPECIALS + words(30)[::-1] + ["x0", "x1"], seed=2, added=("<|im_start|>",),
                chat_template="{% for m in messages %}chat:{{ m['content'] }}{% endfor %}")
    vocab_model(root / "code", SPECIALS + words(20) + ["x1", "y0"], seed=3,
                chat_template="{% for m in messages %}code:{{ m['content'] }}{% endfor %}")
    vocab_model(root / "math", SPECIALS + words(30), seed=4,
                chat_template="{% for m in messages %}code:{{ m['content'] }}{% endfor %}")
    return root


def _spec(models_block: str, tail: str, method: str = "linear", base: str | None = "base"):
    head = f"merge_method: {method}\n" + (f"base_model: {base}\n" if base else "")
    return parse_spec(head + models_block + tail)


THREE = ("models:\n  - model: base\n    parameters: {weight: 1}\n  - model: chat\n    parameters: {weight: 1}\n"
         "  - model: code\n    parameters: {weight: 1}\n")


def _raw(root: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    tensors = load_file(str(root / name / "model.safetensors"))
    vocab = json.loads((root / name / "tokenizer.json").read_text())["model"]["vocab"]
    for added in json.loads((root / name / "tokenizer.json").read_text())["added_tokens"]:
        vocab[added["content"]] = added["id"]
    return tensors, vocab


def _expected_rows(root: Path, names: list[str], base: str | None, out_vocab: dict[str, int], tensor: str,
                   rows: int) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """The fill rules, one token at a time, straight from the models' files. Also: per model, the rows that
    are means (computed, so only equal up to rounding)."""
    raw = {n: _raw(root, n) for n in names}
    out, means = {}, {}
    for n in names:
        tensors, vocab = raw[n]
        new = torch.zeros((rows, tensors[tensor].shape[1]), dtype=torch.float32)
        means[n] = list(range(len(out_vocab), rows))
        for token, tid in out_vocab.items():
            if token in vocab:
                new[tid] = tensors[tensor][vocab[token]].float()
                continue
            have = [m for m in names if token in raw[m][1]]
            if len(have) == 1:
                new[tid] = raw[have[0]][0][tensor][raw[have[0]][1][token]].float()
            elif base in have:
                new[tid] = raw[base][0][tensor][raw[base][1][token]].float()
            elif have:
                new[tid] = sum(raw[m][0][tensor][raw[m][1][token]].float() for m in have) / len(have)
                means[n].append(tid)
        if rows > len(out_vocab):
            new[len(out_vocab):] = new[:len(out_vocab)].mean(0)
        out[n] = new
    return out, means


def _read_aligned(plan, name: str) -> list[torch.Tensor]:
    """What the executor's read path hands the method for one tensor (inputs in plan order)."""
    item = next(t for t in plan.tensors if t.name == name)
    loaded = StreamingExecutor(plan, show_progress=False)._read(item)
    return ([loaded.base] if loaded.base is not None else []) + loaded.others


# -- validation --------------------------------------------------------------------------------------------

def test_differing_vocab_sizes_fail_at_plan_time_naming_models(models):
    with pytest.raises(PlanError) as err:
        plan_spec(_spec(THREE, ""), base_dir=models)
    text = str(err.value)
    assert "base has 34" in text and "chat has 37" in text and "code has 26" in text
    assert "tokenizer_source: union" in text


def test_validate_cli_reports_vocab_mismatch_without_reading_tensors(models):
    (models / "mismatch.yml").write_text("merge_method: linear\nbase_model: base\n" + THREE)
    proc = run_cli("validate", str(models / "mismatch.yml"), cwd=models)
    assert proc.returncode == 2 and "different vocabulary sizes" in proc.stderr and "tokenizer" in proc.stderr


def test_same_size_different_order_is_aligned_not_refused(tmp_path):
    vocab_model(tmp_path / "a", SPECIALS + words(10), seed=1)
    vocab_model(tmp_path / "b", SPECIALS + words(10)[::-1], seed=2)
    spec = "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n" \
           "    parameters: {weight: 0}\ntokenizer_source: a\n"
    run_merge(parse_spec(spec), tmp_path / "out", MergeOptions(base_dir=tmp_path, show_progress=False))
    # weight 0 for b: the output is a's rows; with the permutation applied b's reversed rows would count 0 anyway,
    # so merge again with the weights swapped: the result must be b's rows put back in a's order.
    spec_b = spec.replace("{weight: 1}\n  - model: b\n    parameters: {weight: 0}",
                          "{weight: 0}\n  - model: b\n    parameters: {weight: 1}")
    run_merge(parse_spec(spec_b), tmp_path / "out_b", MergeOptions(base_dir=tmp_path, show_progress=False))
    raw_b, vocab_b = _raw(tmp_path, "b")
    out = load_folder(tmp_path / "out_b")["model.embed_tokens.weight"]
    vocab_a = _raw(tmp_path, "a")[1]
    for token, tid in vocab_a.items():
        assert torch.equal(out[tid], raw_b["model.embed_tokens.weight"][vocab_b[token]]), token


# -- fill rules ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["base", None])
def test_union_fill_rules_match_reference(models, base):
    spec = _spec(THREE, "tokenizer: {source: union, pad_to_multiple_of: 8}\n", base=base)
    plan = plan_spec(spec, base_dir=models)
    vocab = plan.tokenizer.vocab
    assert set(vocab) == set(SPECIALS + words(30) + ["x0", "x1", "y0", "<|im_start|>"])
    assert plan.tokenizer.rows == 40  # 38 tokens padded to a multiple of 8
    names = [plan.models[i.model].name for i in next(t for t in plan.tensors if t.name == "lm_head.weight").inputs]
    for tensor in ("model.embed_tokens.weight", "lm_head.weight"):
        got = _read_aligned(plan, tensor)
        expected, means = _expected_rows(models, [Path(n).name for n in names], base, vocab, tensor, 40)
        for n, g in zip(names, got):
            assert g.shape == (40, 64) and g.dtype == torch.bfloat16
            want = expected[Path(n).name]
            # rows copied from a model are exact; means (and padding) are bf16 arithmetic, equal up to rounding
            exact = [i for i in range(40) if i not in means[Path(n).name]]
            assert vocab["x1"] in means["base"]  # chat and code have it, base does not: their mean
            assert torch.equal(g[exact].float(), want[exact]), (tensor, n)
            torch.testing.assert_close(g.float(), want, rtol=1e-2, atol=1e-3)
    # only the vocabulary tensors are re-indexed
    assert {t.name for t in plan.tensors if t.vocab is not None} == {"model.embed_tokens.weight", "lm_head.weight"}
    for m in plan.models:
        m.close()


def test_tokens_overrides_and_force(models):
    spec = _spec(THREE, """tokenizer:
  source: base
  tokens:
    x1: {source: code}
    w3: {source: {kind: model_token, model: chat, token: x0}, force: true}
    w4: {source: {kind: zero}, force: true}
    w5: {source: {kind: model_token, model: code, token_id: 2}}
""")
    plan = plan_spec(spec, base_dir=models)
    vocab = plan.tokenizer.vocab
    assert vocab["x1"] == 34  # appended to the base vocabulary
    got = dict(zip(["base", "chat", "code"], _read_aligned(plan, "model.embed_tokens.weight")))
    raw = {n: _raw(models, n) for n in ("base", "chat", "code")}
    emb = {n: raw[n][0]["model.embed_tokens.weight"] for n in raw}
    for n in got:
        assert torch.equal(got[n][vocab["w3"]], emb["chat"][raw["chat"][1]["x0"]])  # forced everywhere
        assert not got[n][vocab["w4"]].any()
        assert torch.equal(got[n][vocab["x1"]], emb["code"][raw["code"][1]["x1"]] if n != "chat"
                           else emb["chat"][raw["chat"][1]["x1"]])  # not forced: chat keeps its own
    # w5 is in every model: the unforced rule changes nothing
    assert torch.equal(got["code"][vocab["w5"]], emb["code"][raw["code"][1]["w5"]])
    for m in plan.models:
        m.close()


def test_new_token_with_base_source(models, tmp_path):
    """mergekit 0.1.5 crashes here (see the xfail in test_tokenizer_mergekit.py); we append the token."""
    spec = _spec(THREE, "tokenizer:\n  source: base\n  tokens:\n    <fresh>: {source: {kind: zero}}\n")
    run_merge(spec, tmp_path / "out", MergeOptions(base_dir=models, show_progress=False))
    vocab = AutoTokenizer.from_pretrained(str(tmp_path / "out")).get_vocab()
    embed = load_folder(tmp_path / "out")["model.embed_tokens.weight"]
    assert len(vocab) == 35 and embed.shape[0] == 35 and not embed[vocab["<fresh>"]].any()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 35


@pytest.mark.parametrize("tokens, match", [
    ({"<new>": {}}, "gives no source"),
    ({"x0": {"source": "math"}}, "not an input"),
    ({"w1": {"source": {"kind": "model_token", "model": "chat", "token": "nope"}, "force": True}}, "not in"),
    ({"w1": {"source": {"kind": "model_token", "model": "chat", "token_id": 99}, "force": True}}, "out of range"),
    ({"x0": {"source": "code"}}, "has no token"),
])
def test_override_errors_name_the_token(models, tokens, match):
    import yaml

    spec = _spec(THREE, yaml.safe_dump({"tokenizer": {"source": "union", "tokens": tokens}}))
    with pytest.raises(PlanError, match=match):
        plan_spec(spec, base_dir=models)


def test_model_token_needs_exactly_one_of_token_and_id(models):
    spec = _spec(THREE, "tokenizer:\n  tokens:\n    w1: {source: {kind: model_token, model: chat, token: w2, "
                        "token_id: 3}}\n")
    with pytest.raises(SpecError, match="exactly one") as err:
        plan_spec(spec, base_dir=models)
    assert "tokenizer.tokens.w1" in str(err.value)


# -- output files ---------------------------------------------------------------------------------------------

def test_output_tokenizer_config_and_resume_fingerprint(models, tmp_path):
    from hubmerge.pipeline.run import plan_fingerprint

    spec = _spec(THREE, "tokenizer: {source: union, pad_to_multiple_of: 16}\n")
    result = run_merge(spec, tmp_path / "out", MergeOptions(base_dir=models, show_progress=False))
    out = tmp_path / "out"
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok.get_vocab()) == 38 and tok.convert_tokens_to_ids("y0") == tok.get_vocab()["y0"]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 48
    tensors = load_folder(out)
    assert tensors["model.embed_tokens.weight"].shape == (48, 64) and tensors["lm_head.weight"].shape == (48, 64)
    assert "tokenizer.json" in result.files and "tokenizer_config.json" in result.files
    # a different tokenizer section is a different plan: a partial output of one is not resumed by the other
    other = plan_spec(_spec(THREE, "tokenizer: {source: union, pad_to_multiple_of: 8}\n"), base_dir=models)
    assert plan_fingerprint(other, 1 << 30) != plan_fingerprint(result.plan, 1 << 30)


def test_tied_embeddings_model_is_aligned_through_its_input_embedding(tmp_path):
    vocab_model(tmp_path / "a", SPECIALS + words(10), seed=1)
    vocab_model(tmp_path / "t", SPECIALS + words(12)[::-1], seed=2, arch="gemma2")  # gemma2 demo: tied, no lm_head
    # gemma2 and llama differ in layers; use llama-shaped tied weights instead
    from tokenizer_models import write_vocab_tokenizer

    from hubmerge.demo import TinyShape, base_weights, write_model

    shape = TinyShape(vocab=16, layers=2, tie_embeddings=True)
    write_model(tmp_path / "t", base_weights(shape, 5), shape, tokenizer=False)
    write_vocab_tokenizer(tmp_path / "t", SPECIALS + words(12)[::-1])
    spec = parse_spec("merge_method: linear\nbase_model: a\nmodels:\n  - model: a\n    parameters: {weight: 0}\n"
                      "  - model: t\n    parameters: {weight: 1}\ntokenizer_source: a\n")
    run_merge(spec, tmp_path / "out", MergeOptions(base_dir=tmp_path, show_progress=False))
    out = load_folder(tmp_path / "out")
    raw_t, vocab_t = _raw(tmp_path, "t")
    vocab_a = _raw(tmp_path, "a")[1]
    for token, tid in vocab_a.items():
        row = raw_t["model.embed_tokens.weight"][vocab_t[token]]
        assert torch.equal(out["lm_head.weight"][tid], row) and torch.equal(out["model.embed_tokens.weight"][tid], row)


def test_tokens_past_vocab_size_are_dropped(tmp_path):
    """A tokenizer with more entries than the embedding has rows (config vocab_size 34, tokenizer 36)."""
    from tokenizer_models import write_vocab_tokenizer

    from hubmerge.demo import TinyShape, base_weights, write_model

    shape = TinyShape(vocab=34, layers=2)
    write_model(tmp_path / "big", base_weights(shape, 7), shape, tokenizer=False)
    write_vocab_tokenizer(tmp_path / "big", SPECIALS + words(32))  # w30, w31 have no row
    vocab_model(tmp_path / "other", SPECIALS + words(32)[::-1][:30], seed=8)  # 34 tokens: w31..w2
    spec = parse_spec("merge_method: linear\nbase_model: big\nmodels:\n  - model: big\n    parameters: {weight: 1}\n"
                      "  - model: other\n    parameters: {weight: 1}\ntokenizer_source: union\n")
    plan = plan_spec(spec, base_dir=tmp_path)
    vocab = plan.tokenizer.vocab
    assert "w30" in vocab and "w31" in vocab  # from other, where they do have rows
    assert vocab["w30"] >= 34 and vocab["w31"] >= 34 and len(vocab) == 36
    big = plan.tokenizer.permutations[0]
    assert int(big[vocab["w30"]]) == -1 and int(big[vocab["w31"]]) == -1 and int(big.max()) == 33
    for m in plan.models:
        m.close()
