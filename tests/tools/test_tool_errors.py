"""Bad input to extract-lora and tokensurgeon: one-line errors (exit 2) or warnings naming the culprit, and
nothing half-written. The CLI runs in-process (``hubmerge.cli.main``), as the console script would."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tools.test_tokensurgeon import DONOR_SPECIALS, DONOR_WORDS, MODEL_SPECIALS, MODEL_WORDS
from tools.tool_models import lora_family, vocab_model

from hubmerge.cli import main
from hubmerge.demo import TinyShape, base_weights, write_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool-errors")
    out = lora_family(root)
    shape = TinyShape(layers=2)
    out["unrelated"] = write_model(root / "unrelated", base_weights(shape, 777), shape, dtype="float32")
    out["narrow"] = write_model(root / "narrow", base_weights(TinyShape(layers=2, hidden=32, intermediate=64), 5),
                                TinyShape(layers=2, hidden=32, intermediate=64), dtype="float32")
    qwen = TinyShape(arch="qwen2", layers=2)
    out["qwen"] = write_model(root / "qwen", base_weights(qwen, 5), qwen, dtype="float32")
    out["tm"] = vocab_model(root / "tm", MODEL_WORDS, seed=3, specials=MODEL_SPECIALS)
    out["td"] = vocab_model(root / "td", DONOR_WORDS, seed=4, specials=DONOR_SPECIALS)
    slow = vocab_model(root / "slow", DONOR_WORDS, seed=4, specials=DONOR_SPECIALS)
    (slow / "tokenizer.json").unlink()
    (slow / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ByT5Tokenizer"}))
    out["slow"] = slow
    out["root"] = root
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv) + ["-q"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a partial output folder was left behind"


@pytest.mark.parametrize("base, message", [
    ("narrow", "differ in hidden size: 64 vs 32"),
    ("qwen", "differ in architecture: LlamaForCausalLM vs Qwen2ForCausalLM"),
])
def test_a_base_of_another_shape_is_a_one_line_error(models, capsys, tmp_path, base, message):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "extract-lora", "--model", str(models["ft"]), "--base", str(models[base]),
                      "-o", str(out))
    assert rc == 2 and err.startswith("error: ") and message in err and "Traceback" not in err
    assert str(models[base]) in err.splitlines()[0]
    _nothing_written(out)


def test_a_base_that_is_not_the_ancestor_warns_with_the_ratio(models, capsys, caplog, tmp_path):
    caplog.set_level(logging.WARNING)
    rc, out, err = _run(capsys, "extract-lora", "--model", str(models["ft"]), "--base", str(models["unrelated"]),
                        "--rank", "2", "-o", str(tmp_path / "out"))
    assert rc == 0, err
    warning = next(r.getMessage() for r in caplog.records if "does not look like the base" in r.getMessage())
    ratio = float(warning.split(" = ")[1].split(" ")[0])
    assert 1.2 < ratio < 1.6  # two independent initialisations: about sqrt(2)
    assert str(models["unrelated"]) in warning
    card = (tmp_path / "out" / "README.md").read_text()
    assert "does not look like the base" in card  # recorded, not only logged


def test_a_rank_larger_than_the_matrices_warns_and_keeps_full_rank(models, capsys, caplog, tmp_path):
    caplog.set_level(logging.WARNING)
    rc, _, err = _run(capsys, "extract-lora", "--model", str(models["ft"]), "--base", str(models["base"]),
                      "--rank", "100", "--include", "k_proj", "-o", str(tmp_path / "out"))
    assert rc == 0, err
    assert any("rank 100 is more than 2 module(s) allow" in r.getMessage() and "k_proj" in r.getMessage()
               for r in caplog.records)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == 32 and config["target_modules"] == ["k_proj"]  # k_proj is 32 x 64


def test_nan_in_a_tensor_fails_cleanly_naming_it(models, capsys, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in models["ft"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.layers.1.mlp.up_proj.weight"][3, 3] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "extract-lora", "--model", str(broken), "--base", str(models["base"]), "-o", str(out))
    assert rc == 2 and "model.layers.1.mlp.up_proj.weight" in err
    _nothing_written(out)


def test_identical_models_have_nothing_to_extract(models, capsys, tmp_path):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "extract-lora", "--model", str(models["base"]), "--base", str(models["base"]),
                      "-o", str(out))
    assert rc == 2 and "nothing to put in an adapter" in err
    _nothing_written(out)


def test_a_donor_without_a_fast_tokenizer(models, capsys, tmp_path):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "tokensurgeon", "--model", str(models["tm"]), "--donor", str(models["slow"]),
                      "-o", str(out))
    assert rc == 2 and f"the donor {models['slow']} has no fast tokenizer" in err
    _nothing_written(out)


def test_k_larger_than_the_shared_vocabulary(models, capsys, tmp_path):
    out = tmp_path / "out"
    rc, _, err = _run(capsys, "tokensurgeon", "--model", str(models["tm"]), "--donor", str(models["td"]),
                      "-k", "500", "-o", str(out))
    assert rc == 2 and "k=500 is more than the 184 tokens" in err
    _nothing_written(out)


@pytest.mark.parametrize("recipe, message", [
    ("extract_lora: {model: a, base_model: b, rnak: 4}", "extract_lora.rnak: unknown key 'rnak'"),
    ("extract_lora: {model: a, base_model: b, rank: 0}", "extract_lora.rank"),
    ("tokensurgeon: {model: a, donor: b, method: opm}", "did you mean 'omp'?"),
    ("extract_lora: {model: a}", "base_model is a required property"),
])
def test_recipe_mistakes_name_the_yaml_path(capsys, tmp_path, recipe, message):
    spec = tmp_path / "r.yml"
    spec.write_text(recipe + "\n")
    rc, _, err = _run(capsys, "merge", str(spec), "-o", str(tmp_path / "out"))
    assert rc == 2 and message in err
    _nothing_written(tmp_path / "out")


def test_vocab_mismatch_saves_embeddings_in_full(models, tmp_path, caplog):
    """A fine-tune that grew the vocabulary: embed_lora is turned off (a warning says why), the embedding and
    head are saved in full and the card tells how to load it."""
    from hubmerge.pipeline.tools import ToolRun, run_tool
    from hubmerge.spec import parse_spec

    grown = tmp_path / "grown"
    shape = TinyShape(layers=2, vocab=136)
    weights = load_file(str(models["ft"] / "model.safetensors"))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        weights[name] = torch.cat([weights[name], torch.zeros(8, 64)])
    write_model(grown, weights, shape, dtype="float32")
    caplog.set_level(logging.WARNING)
    spec = parse_spec(f"extract_lora: {{model: {grown}, base_model: {models['base']}, embed_lora: true}}\n")
    run_tool(spec, tmp_path / "out", ToolRun(show_progress=False))
    assert any("the vocabularies differ" in r.getMessage() for r in caplog.records)
    saved = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert saved["base_model.model.model.embed_tokens.weight"].shape == (136, 64)
    assert "resize_token_embeddings(136)" in (tmp_path / "out" / "README.md").read_text()


def test_validate_plans_a_recipe_from_headers(models, capsys, tmp_path):
    spec = tmp_path / "r.yml"
    spec.write_text(f"extract_lora: {{model: {models['ft']}, base_model: {models['base']}, rank: 4}}\n")
    rc, out, err = _run(capsys, "validate", str(spec), "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["tool"] == "extract_lora" and summary["lora_candidates"] == 14  # 7 linear layers x 2
    assert [m["name"] for m in summary["models"]] == [str(models["base"]), str(models["ft"])]
