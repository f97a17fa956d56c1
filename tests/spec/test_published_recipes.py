"""Recipe spellings that published model cards use: accepted as mergekit 0.1.5 reads them, or refused in one
line where mergekit refuses them too (or would silently do something else). Merges of these recipes are compared
with mergekit's bytes in tests/merge/test_published_recipes_mergekit.py."""

from __future__ import annotations

import logging
import re

import pytest

from hubmerge.errors import SpecError
from hubmerge.spec import parse_spec
from hubmerge.spec.model import ModelRef
from hubmerge.spec.stages import parse_stages, reference_key

TWO = "merge_method: linear\nmodels:\n  - model: m1\n    parameters: {weight: 0.5}\n  - model: m2\n    parameters: {weight: 0.5}\n"

MEGA = """
slices:
  - sources:
      - {model: org/orca, layer_range: [0, 40]}
      - {model: org/platypus, layer_range: [0, 40]}
merge_method: slerp
base_model: org/orca
parameters: {t: 0.5}
out_path: ./models/gradient-slerp
---
models:
  - model: ./models/gradient-slerp
    parameters: {density: [1, 0.7, 0.1], weight: 1.0}
  - model: org/wizardmath
    parameters: {density: 0.33, weight: 0.5}
merge_method: ties
base_model: org/llama
out_path: ./models/gradient-slerp-ties
"""


# -- multi-document files with out_path (mergekit-mega, examples/mega.yml) -------------------------------------

def test_out_path_documents_are_stages_named_by_the_path_they_would_write():
    first, final = parse_stages(MEGA)
    assert (first.name, first.label, first.needs) == ("gradient-slerp", "./models/gradient-slerp", ())
    assert (final.name, final.needs) == ("gradient-slerp-ties", ("gradient-slerp",))
    assert final.stage_of(ModelRef("./models/gradient-slerp")) == "gradient-slerp"
    assert final.stage_of(ModelRef("models/gradient-slerp/")) == "gradient-slerp"  # the same folder
    assert final.stage_of(ModelRef("./models/gradient-slerp", "main")) is None  # a revision: a Hub model
    assert final.stage_of(ModelRef("org/wizardmath")) is None
    assert "out_path" not in final.spec.raw  # no recipe key: the card's mergekit_config.yml stays mergekit's


def test_documents_after_the_final_one_and_mixed_spellings_order_by_dependency():
    text = "\n---\n".join([
        "out_path: ./out/final\n" + TWO.replace("model: m1", "model: out/left").replace("model: m2", "model: right"),
        "out_path: out/left\n" + TWO,
        "name: right\n" + TWO.replace("model: m1", "model: ./out/left/"),
    ])
    stages = parse_stages(text)
    assert [s.name for s in stages] == ["left", "right", "final"]
    assert stages[2].needs == ("left", "right")


def test_stage_names_from_out_paths_are_plain_and_unique():
    text = "\n---\n".join([
        "out_path: ../../etc/x y\n" + TWO,
        "out_path: /tmp/other/x y\n" + TWO,
        "out_path: final\n" + TWO.replace("model: m1", "model: ../../etc/x y").replace("model: m2", "model: /tmp/other/x y"),
    ])
    stages = parse_stages(text)
    assert [s.name for s in stages] == ["x-y", "x-y-2", "final"]
    odd = ["_hidden", "a..b", "x" * 300, "...", "ü-model", ".cache"]
    # a chain: each document merges the previous one's output, so the last is the final one
    text = "\n---\n".join([f"out_path: './{o}'\n" + TWO.replace("model: m1", f"model: './{odd[i - 1]}'")
                             if i else f"out_path: './{o}'\n" + TWO for i, o in enumerate(odd)])
    names = [s.name for s in parse_stages(text)]
    assert names == ["hidden", "a.b", "x" * 90, "stage", "model", "cache"]
    # plain names, as hubmerge checks a 'name:' (a folder inside the scratch folder)
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", n) and ".." not in n for n in names)


@pytest.mark.parametrize("docs, message, path", [
    (["name: a\nout_path: ./a\n" + TWO, "out_path: ./b\n" + TWO.replace("model: m1", "model: ./a")],
     "document 1.*either 'name' or 'out_path'", "out_path"),
    (["out_path: ./a\n" + TWO, "out_path: a/\n" + TWO.replace("model: m2", "model: ./a")],
     "document 2.*'a/' is written by an earlier document", "out_path"),
    (["out_path: 3\n" + TWO, "out_path: ./b\n" + TWO], "document 1.*out_path must name a folder", "out_path"),
    (["out_path: ./\n" + TWO, "out_path: ./b\n" + TWO], "document 1.*out_path must name a folder", "out_path"),
    (["out_path: ./a\n" + TWO, "out_path: ./b\n" + TWO], r"2 stages are not used .*\./a, \./b", "name"),
    (["out_path: ./a\n" + TWO.replace("model: m1", "model: ./b"), "out_path: ./b\n" + TWO.replace("model: m1", "model: ./a"),
      "out_path: ./c\n" + TWO.replace("model: m1", "model: ./a")], r"cycle: \./a, \./b", "name"),
    (["out_path: ./a\n" + TWO, "out_path: ./b\n" + TWO.replace("model: m1", "model: ./a").replace("weight", "wieght")],
     r"document 2 \('\./b'\).*models\[0\]\.parameters", None),
])
def test_bad_out_path_files_are_refused_naming_the_document_and_key(docs, message, path):
    with pytest.raises(SpecError, match=message) as info:
        parse_stages("\n---\n".join(docs))
    assert path is None or info.value.path == path
    assert "\n" not in info.value.message


def test_a_single_document_out_path_is_ignored_as_mergekit_yaml_ignores_it():
    spec = parse_spec("out_path: ./somewhere\n" + TWO)
    assert "out_path" not in spec.raw
    with pytest.raises(SpecError, match="out_path must name a folder"):
        parse_spec("out_path: [x]\n" + TWO)


def test_reference_keys_fold_spellings_of_one_folder():
    assert reference_key("./a/b/") == reference_key("a//b") == reference_key("a/./b") == "a/b"


# -- tokenizer spellings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("tokenizer_source: model:org/chat\n", ModelRef("org/chat")),
    ("tokenizer_source: 'model: org/chat@v2'\n", ModelRef("org/chat", "v2")),
    ("tokenizer:\n  source: model:org/chat\n  pad_to_multiple_of: 8\n", ModelRef("org/chat")),
    ("tokenizer:\n  source: union\n  tokens: {<x>: {source: m1, force: true}}\n  pad_to_multiple_of: 64\n", "union"),
    ("tokenizer:\n  source: base\n  tokens:\n", "base"),
])
def test_tokenizer_sources_in_every_published_spelling(text, expected):
    spec = parse_spec(TWO + text)
    assert spec.tokenizer.source == expected


def test_a_tokenizer_source_that_is_no_input_is_a_donor():
    assert parse_spec(TWO + "tokenizer_source: model:org/donor\n").tokenizer_donor() == ModelRef("org/donor")
    assert parse_spec(TWO + "tokenizer_source: m2\n").tokenizer_donor() is None
    assert parse_spec(TWO + "tokenizer_source: union\n").tokenizer_donor() is None
    with pytest.raises(SpecError, match="'model:' names no model"):
        parse_spec(TWO + "tokenizer_source: 'model:'\n")


# -- other spellings -------------------------------------------------------------------------------------------

def test_yaml_merge_keys_let_written_keys_override_as_pyyaml_does():
    spec = parse_spec("merge_method: linear\nmodels:\n  - model: a\n    parameters: &w {weight: 0.5, x: 1}\n"
                      "  - model: b\n    parameters:\n      <<: *w\n      weight: 0.25\n".replace(", x: 1", ""))
    assert [m.parameters["weight"] for m in spec.models] == [0.5, 0.25]
    with pytest.raises(SpecError, match="duplicate key 'weight'"):
        parse_spec("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 0.5, weight: 0.2}\n")


def test_parameters_of_other_methods_are_ignored_with_a_warning_but_typos_are_refused(caplog):
    with caplog.at_level(logging.WARNING):
        spec = parse_spec(TWO + "parameters: {normalize: true, int8_mask: true}\n")
    assert spec.parameters["int8_mask"] is True
    assert "takes no 'int8_mask'" in caplog.text
    parse_spec("merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n"
               "parameters: {t: 0.5, normalize: true}\n")
    with pytest.raises(SpecError, match="unknown parameter 'int8_mak'"):
        parse_spec(TWO + "parameters: {int8_mak: true}\n")


@pytest.mark.parametrize("written, torch_name", [("bf16", "bfloat16"), ("fp16", "float16"), ("half", "float16"),
                                                 ("fp32", "float32")])
def test_dtype_shorthands_are_refused_naming_torchs_name(written, torch_name):
    # mergekit 0.1.5 refuses them too, once it starts merging ("Unimplemented dtype").
    with pytest.raises(SpecError, match=f"write '{torch_name}'") as info:
        parse_spec(TWO + f"dtype: {written}\n")
    assert info.value.path == "dtype"
    with pytest.raises(SpecError, match=f"write '{torch_name}'"):
        parse_spec(TWO + f"out_dtype: {written}\n")


def test_dtype_spellings_mergekit_reads():
    spec = parse_spec(TWO + "dtype: torch.float16\nout_dtype: bfloat16\n")
    assert (spec.dtype, spec.out_dtype) == ("float16", "bfloat16")


def test_model_references_in_dict_form_with_revisions_and_adapters():
    spec = parse_spec("merge_method: linear\nbase_model: org/base+org/lora@v1\nparameters: {weight: 0.2}\nmodels:\n"
                      "  - model: {model: {path: org/a, revision: r1}, lora: {path: org/l, revision: r2}}\n"
                      "    parameters: {weight: 0.5}\n"
                      "  - model: org/b@main\n    parameters: {weight: 0.5}\n")
    assert spec.base_model == ModelRef("org/base", None, ModelRef("org/lora", "v1"))
    assert spec.models[0].model == ModelRef("org/a", "r1", ModelRef("org/l", "r2"))
    assert spec.models[1].model == ModelRef("org/b", "main")


def test_layer_range_under_models_is_kept_for_the_planner():
    spec = parse_spec(TWO.replace("parameters: {weight: 0.5}\n  - model: m2",
                                  "layer_range: [0, 32]\n    parameters: {weight: 0.5}\n  - model: m2"))
    assert spec.models[0].layer_range == (0, 32) and spec.models[1].layer_range is None
