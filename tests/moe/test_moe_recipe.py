"""MoE recipes: mergekit-moe's YAML parsed strictly, bad input refused with one line naming the field and
nothing written, the CLI paths (moe, merge, validate), resume, and the layer-by-layer hidden-state stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_folder
from moe_models import dense_family

from hubmerge import cli
from hubmerge.errors import SpecError
from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.sources.readers import LocalFileReader
from hubmerge.spec import parse_spec
from hubmerge.spec.moe import MoESpec, resolve_families
from hubmerge.spec.pin import pinned_document

GOOD = """
base_model: org/base
gate_mode: hidden
experts:
  - source_model: org/chat@v1
    positive_prompts: ["hello there"]
    negative_prompts: ["2 + 2 ="]
    residual_scale: 0.5
  - source_model: {path: org/math, revision: main}
    positive_prompts: ["solve for x"]
    noise_scale: 0.01
shared_experts:
  - source_model: org/base
    positive_prompts: ["anything"]
architecture: Qwen MoE
dtype: torch.bfloat16
experts_per_token: 1
tokenizer_source: org/chat@v1
chat_template: chatml
hubmerge: {target: me/moe, seed: 3}
"""


def test_recipe_parses_into_typed_spec():
    spec = parse_spec(GOOD)
    assert isinstance(spec, MoESpec) and spec.merge_method == "moe"
    assert [str(r) for r in spec.referenced_models()] == ["org/base", "org/chat@v1", "org/math@main"]
    assert spec.experts[0].negative_prompts == ("2 + 2 =",) and spec.experts[0].residual_scale == 0.5
    assert spec.experts[1].noise_scale == 0.01 and spec.experts[1].yaml_path == "experts[1]"
    assert spec.families == ("qwen2_moe",) and spec.dtype == "bfloat16" and spec.experts_per_token == 1
    assert spec.hubmerge.target == "me/moe" and spec.hubmerge.seed == 3


def test_families_as_mergekit_matches_them():
    assert resolve_families(None) == ("mixtral", "deepseek", "qwen2_moe", "qwen3_moe")
    assert resolve_families("qwen") == ("qwen2_moe", "qwen3_moe")  # a prefix of both names
    assert resolve_families("Mixtral") == ("mixtral",) and resolve_families("deepseek moe") == ("deepseek",)
    assert resolve_families("qwen2_moe") == ("qwen2_moe",) and resolve_families("QWEN3") == ("qwen3_moe",)


def test_pinning_rewrites_expert_references():
    doc = pinned_document(parse_spec(GOOD).raw, {"org/chat": "a" * 40, "org/math": "b" * 40, "org/base": "c" * 40})
    assert doc["experts"][0]["source_model"] == "org/chat@" + "a" * 40
    assert doc["experts"][1]["source_model"] == {"path": "org/math", "revision": "b" * 40}
    assert doc["shared_experts"][0]["source_model"] == "org/base@" + "c" * 40
    assert doc["hubmerge"]["track"] == {"org/base": "main", "org/chat": "v1", "org/math": "main"}


def _bad(text: str, **changes) -> str:
    return text + "".join(f"{k}: {v}\n" for k, v in changes.items())


BASE = "base_model: org/base\nexperts:\n  - source_model: org/a\n    positive_prompts: [x]\n" \
       "  - source_model: org/b\n    positive_prompts: [y]\n"


@pytest.mark.parametrize("text, path, needle", [
    (BASE + "gate_mode: hiden\n", "gate_mode", "did you mean 'hidden'"),
    (BASE.replace("positive_prompts: [x]", "positive_prompt: [x]"), "experts[0].positive_prompt", "positive_prompts"),
    (BASE.replace("positive_prompts: [x]", "positive_prompts: []"), "experts[0].positive_prompts", "needs prompts"),
    (BASE + "experts_per_token: 3\n", "experts_per_token", "only 2 experts"),
    (BASE + "experts_per_token: 0\n", "experts_per_token", ""),
    (BASE + "architecture: llama\n", "architecture", "unknown output family"),
    (BASE + "architecture: qwen_moe_v9\n", "architecture", "unknown output family"),
    (BASE.replace("[y]", "[x]"), "experts", "same prompts"),
    (BASE + "tokenizer_source: union\n", "tokenizer_source", "base's embeddings"),
    (BASE + "tokenizer: {source: base, pad_to_multiple_of: 64}\n", "tokenizer.pad_to_multiple_of", ""),
    (BASE + "dtype: int8\n", "dtype", ""),
    (BASE + "experts_per_tok: 2\n", "experts_per_tok", "did you mean 'experts_per_token'"),
    (BASE.replace("positive_prompts: [x]", "positive_prompts: [x]\n    noise_scale: lots"), "experts[0].noise_scale", ""),
    (BASE + "shared_experts:\n  - source_model: org/c\n    positive_prompts: [z]\n  - source_model: org/d\n",
     "shared_experts[1].positive_prompts", "every shared expert or to none"),
])
def test_bad_recipes_name_the_field(text, path, needle):
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert err.value.path == path and needle in str(err.value)


def test_random_modes_need_no_prompts():
    spec = parse_spec("base_model: org/base\ngate_mode: random\nexperts:\n  - source_model: org/a\n"
                      "  - source_model: org/b\n")
    assert spec.gate_mode == "random" and not spec.experts[0].positive_prompts


# -- against models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-models")
    dense_family(root, "llama", seed=5)
    dense_family(root / "odd", "qwen2", names=("qwen2",), seed=6)
    dense_family(root / "odd", "llama", names=("wide",), seed=7, hidden_size=128, intermediate_size=96)
    dense_family(root / "odd", "llama", names=("vocab",), seed=8, vocab_size=130)
    return root


RECIPE = """
base_model: base
gate_mode: hidden
experts:
  - source_model: e1
    positive_prompts: ["w5 w6 w7", "w8"]
  - source_model: {second}
    positive_prompts: ["w30 w31 w32"]
    negative_prompts: ["w1 w2", "w3"]
"""


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("second, field, needle", [
    ("odd/qwen2", "experts[1].source_model", "its architecture is qwen2, the base's is llama"),
    ("odd/wide", "experts[1].source_model", "hidden size 128 differs from the base's 64"),
    ("odd/vocab", "experts[1].source_model", "vocabulary of 130 tokens differs from the base's 128"),
])
def test_incompatible_expert_one_line_error_nothing_written(models, tmp_path, capsys, second, field, needle):
    recipe = tmp_path / "moe.yml"
    recipe.write_text(RECIPE.format(second=str(models / second)).replace("base_model: base", f"base_model: {models / 'base'}")
                      .replace("source_model: e1", f"source_model: {models / 'e1'}"))
    code, _, err = _cli(capsys, "moe", str(recipe), "-o", str(tmp_path / "out"), "-q")
    assert code == 2 and err.startswith(f"error: {field}") and needle in err.splitlines()[0], err
    assert "Traceback" not in err and len(err.splitlines()) <= 2
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.hubmerge-partial").exists()


@pytest.mark.parametrize("change, needle", [
    (("positive_prompts: [\"w5 w6 w7\", \"w8\"]", "positive_prompts: []"), "error: experts[0].positive_prompts: gate_mode 'hidden' needs prompts"),
    (("gate_mode: hidden", "gate_mode: hidden\nexperts_per_token: 3"), "error: experts_per_token: 3 experts per token, but the recipe has only 2 experts"),
    (("gate_mode: hidden", "gate_mode: hidden\narchitecture: gemma_moe"), "error: architecture: unknown output family 'gemma_moe'"),
    (("gate_mode: hidden", "gate_mode: hidden\narchitecture: qwen3"), "error: architecture: no output family can hold this recipe (Qwen3 MoE: it is built from qwen3 models, not llama)"),
])
def test_bad_recipe_cli_errors(models, tmp_path, capsys, change, needle):
    recipe = models / f"bad-{tmp_path.name}.yml"
    recipe.write_text(RECIPE.format(second="e2").replace(*change))
    code, _, err = _cli(capsys, "moe", str(recipe), "-o", str(tmp_path / "out"), "-q")
    assert code == 2 and err.startswith(needle), err
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.hubmerge-partial").exists()


def test_validate_plans_from_headers_alone(models, capsys, monkeypatch):
    recipe = models / "plan.yml"
    recipe.write_text(RECIPE.format(second="e2"))

    def no_data(self, info):
        raise AssertionError(f"validate read tensor data ({info.name})")

    monkeypatch.setattr(LocalFileReader, "read", no_data)
    code, out, _ = _cli(capsys, "validate", str(recipe), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["kind"] == "moe" and doc["family"] == "mixtral" and doc["layers"] == 3
    assert [e["model"] for e in doc["experts"]] == ["e1", "e2"] and doc["experts"][1]["negative_prompts"] == 2
    fused = next(t for t in doc["plan"] if t["name"] == "model.layers.0.mlp.experts.gate_up_proj")
    assert fused["shape"] == [2, 192, 64] and fused["parts"] == ["e1", "e1", "e2", "e2"]
    code, out, _ = _cli(capsys, "validate", str(recipe))
    assert code == 0 and out.startswith("recipe ok: Mixtral mixture of 2 experts (2 per token), 3 layers")


def test_moe_and_merge_commands_build_the_same_folder(models, tmp_path, capsys):
    recipe = models / "cli.yml"
    recipe.write_text(RECIPE.format(second="e2"))
    assert _cli(capsys, "moe", str(recipe), "-o", str(tmp_path / "a"), "-q")[0] == 0
    assert _cli(capsys, "merge", str(recipe), "-o", str(tmp_path / "b"), "-q")[0] == 0
    a, b = load_folder(tmp_path / "a"), load_folder(tmp_path / "b")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    card = (tmp_path / "a" / "README.md").read_text()
    assert "- moe" in card and "## Experts" in card and "“w30 w31 w32”" in card and "“w1 w2”; “w3”" in card
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        ".hubmerge-output", "README.md", "config.json", "generation_config.json", "mergekit_moe_config.yml",
        "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    spec = models / "merge.yml"
    spec.write_text("merge_method: linear\nmodels:\n  - model: base\n    parameters: {weight: 1}\n")
    code, _, err = _cli(capsys, "moe", str(spec), "-o", str(tmp_path / "c"))
    assert code == 2 and err.startswith("error: ") and "not an MoE recipe" in err


class _Boom(Exception):
    pass


def test_interrupted_moe_resumes_bit_identical(models, tmp_path):
    spec = parse_spec(RECIPE.format(second="e2"))
    options = dict(base_dir=models, show_progress=False, max_shard_size=40_000)
    full = run_merge(spec, tmp_path / "full", MergeOptions(**options))
    assert len(full.shards) > 3
    finished = []

    def crash_after_two(path: Path) -> None:
        finished.append(path.name)
        if len(finished) == 2:
            raise _Boom()

    with pytest.raises(_Boom):
        run_merge(spec, tmp_path / "out", MergeOptions(**options, on_shard=crash_after_two))
    assert not (tmp_path / "out").exists()
    again = []
    resumed = run_merge(spec, tmp_path / "out", MergeOptions(**options, resume=True, on_shard=lambda p: again.append(p.name)))
    assert set(again).isdisjoint(finished[:2]) and len(again) == len(full.shards) - 2
    assert resumed.content_hash == full.content_hash


def test_hidden_states_stream_each_layer_once(models, tmp_path, monkeypatch):
    """Every batch of prompts goes through layer i before layer i+1 is read: each base tensor is read once
    (however many prompt batches), in layer order, and the last layer (its output is never used) not at all."""
    reads: list[str] = []
    original = LocalFileReader.read

    def logged(self, info):
        if str(self.root).endswith("/base"):
            reads.append(info.name)
        return original(self, info)

    monkeypatch.setattr(LocalFileReader, "read", logged)
    spec = parse_spec(RECIPE.format(second="e2").replace("experts:", "experts_per_token: 1\nexperts:"))
    from hubmerge.merge.moe.plan import plan_moe
    from hubmerge.pipeline.moe import _tokenizer_of, router_rows

    plan = plan_moe(spec, base_dir=models)
    try:
        with _tokenizer_of(plan, plan.base, required=True) as tok:
            rows = router_rows(plan, tok, show_progress=False)
    finally:
        for m in plan.models:
            m.close()
    assert rows["router"].shape == (3, 2, 64) and rows["router"].dtype == torch.bfloat16
    layer_reads = [int(n.split(".")[2]) for n in reads if n.startswith("model.layers.")]
    assert layer_reads == sorted(layer_reads) and set(layer_reads) == {0, 1}  # 3 batches, layers 0-1 read once
    assert len(reads) == len(set(reads))
    norms = rows["router"].float().norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-2)


def test_card_of_a_recipe_and_an_moe_as_the_final_stage(models, tmp_path, capsys):
    recipe = models / "card.yml"
    recipe.write_text(RECIPE.format(second="e2"))
    code, out, _ = _cli(capsys, "card", str(recipe))
    assert code == 0 and "## Experts" in out and "content_hash: null" in out and "- moe" in out
    stage = "name: blend\nmerge_method: linear\nmodels:\n  - model: e1\n    parameters: {weight: 0.5}\n" \
            "  - model: e3\n    parameters: {weight: 0.5}\ndtype: bfloat16\n"
    multi = models / "multi.yml"
    multi.write_text(stage + "---\n" + RECIPE.format(second="e2").replace("source_model: e1", "source_model: blend"))
    assert _cli(capsys, "merge", str(multi), "-o", str(tmp_path / "moe"), "-q")[0] == 0
    alone = run_merge(parse_spec(stage), tmp_path / "blend", MergeOptions(base_dir=models, show_progress=False))
    moe, blend = load_folder(tmp_path / "moe"), load_folder(alone.output)
    assert torch.equal(moe["model.layers.1.mlp.experts.down_proj"][0], blend["model.layers.1.mlp.down_proj.weight"])
    assert not (tmp_path / ".moe.hubmerge-stages").exists()  # the intermediate is gone
