"""Spec parsing: mergekit's grammar accepted, mistakes rejected with the YAML path and a hint."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hubmerge.errors import SpecError
from hubmerge.spec import parse_ref, parse_size, parse_spec
from hubmerge.spec.model import Conditional, ModelRef

SLERP_GRADIENT = """
merge_method: slerp
base_model: org/model-a
slices:
  - sources:
      - {model: org/model-a, layer_range: [0, 32]}
      - {model: org/model-b, layer_range: [0, 32]}
parameters:
  t:
    - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}
    - {filter: mlp,       value: [1, 0.5, 0.7, 0.3, 0]}
    - value: 0.5
dtype: bfloat16
"""

DARE_TIES = """
merge_method: dare_ties
base_model: mistralai/Mistral-7B-v0.1@main
models:
  - model: teknium/OpenHermes-2.5-Mistral-7B
    parameters: {weight: 0.5, density: 0.6}
  - model: HuggingFaceH4/zephyr-7b-beta
    parameters: {weight: [0.3, 0.7], density: 0.6}
parameters: {int8_mask: true, normalize: true, lambda: 1.0}
dtype: bfloat16
tokenizer:
  source: base
  tokens:
    <|im_start|>: {source: teknium/OpenHermes-2.5-Mistral-7B}
chat_template: chatml
"""

PASSTHROUGH = """
merge_method: passthrough
slices:
  - sources: [{model: org/model-a, layer_range: [0, 3]}]
  - sources:
      - model: org/model-b
        layer_range: [1, 4]
        parameters:
          scale: [{filter: o_proj, value: 0.5}, {value: 1.0}]
dtype: bfloat16
"""


def test_mergekit_examples_parse():
    slerp = parse_spec(SLERP_GRADIENT)
    assert slerp.merge_method == "slerp"
    assert slerp.base_model == ModelRef("org/model-a")
    assert [s.layer_range for s in slerp.slices[0].sources] == [(0, 32), (0, 32)]
    t = slerp.parameters["t"]
    assert t[0] == Conditional((0, 0.5, 0.3, 0.7, 1), "self_attn") and t[2] == Conditional(0.5, None)

    dare = parse_spec(DARE_TIES)
    assert dare.base_model == ModelRef("mistralai/Mistral-7B-v0.1", "main")
    assert dare.models[1].parameters["weight"] == (0.3, 0.7)
    assert dare.parameters["lambda"] == 1.0 and dare.tokenizer.source == "base"
    assert dare.chat_template == "chatml"

    passthrough = parse_spec(PASSTHROUGH)
    assert len(passthrough.slices) == 2 and passthrough.slices[1].sources[0].layer_range == (1, 4)


def test_modules_default_form_and_revision_key():
    spec = parse_spec("""
merge_method: linear
modules:
  default:
    models:
      - model: {path: org/a, revision: v1.0}
        parameters: {weight: 1}
      - model: org/b
        parameters: {weight: 2}
    parameters: {normalize: false}
""")
    (module,) = spec.modules
    assert module.name == "default" and module.yaml_path == "modules.default" and not spec.models
    assert module.models[0].model == ModelRef("org/a", "v1.0") and module.models[0].yaml_path == "modules.default.models[0]"
    assert module.parameters == {"normalize": False}


def test_misspelled_parameter_names_path_and_suggests():
    text = DARE_TIES.replace("{weight: [0.3, 0.7], density: 0.6}", "{weight: [0.3, 0.7], densty: 0.6}")
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert err.value.path == "models[1].parameters.densty"
    assert "did you mean 'density'" in str(err.value)


def test_unknown_top_level_key_suggests():
    with pytest.raises(SpecError) as err:
        parse_spec(SLERP_GRADIENT.replace("dtype:", "dtyp:"))
    assert err.value.path == "dtyp" and "did you mean 'dtype'" in str(err.value)


def test_unknown_key_inside_source():
    with pytest.raises(SpecError) as err:
        parse_spec(SLERP_GRADIENT.replace("layer_range: [0, 32]}", "layer_range: [0, 32], weigth: 1}", 1))
    assert err.value.path == "slices[0].sources[0].weigth"


def test_unknown_method_suggests():
    with pytest.raises(SpecError) as err:
        parse_spec(DARE_TIES.replace("dare_ties", "dare_tie"))
    assert err.value.path == "merge_method" and "did you mean 'dare_ties'" in str(err.value)


def test_shared_parameter_at_model_level_is_refused():
    with pytest.raises(SpecError) as err:
        parse_spec(DARE_TIES.replace("{weight: 0.5, density: 0.6}", "{weight: 0.5, density: 0.6, normalize: true}"))
    assert err.value.path == "models[0].parameters.normalize"
    assert "top-level" in str(err.value)


def test_invalid_yaml_names_the_line():
    with pytest.raises(SpecError) as err:
        parse_spec("merge_method: linear\nmodels:\n  - model: a\n   parameters: {weight: 1}\n")
    assert "line" in str(err.value) and "invalid YAML" in str(err.value)


def test_duplicate_keys_are_errors():
    with pytest.raises(SpecError, match="duplicate key 'dtype'"):
        parse_spec(SLERP_GRADIENT + "dtype: float16\n")


def test_missing_required_parameter():
    with pytest.raises(SpecError) as err:
        parse_spec("merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n  - model: b\n")
    assert "'t'" in str(err.value)


def test_input_count_contract():
    with pytest.raises(SpecError, match="exactly 2"):
        parse_spec("merge_method: slerp\nbase_model: a\nmodels:\n  - model: b\n  - model: c\n"
                   "parameters: {t: 0.5}\n")


def test_base_required():
    with pytest.raises(SpecError, match="needs a base model") as err:
        parse_spec("merge_method: ties\nmodels:\n  - model: b\n    parameters: {weight: 1}\n")
    assert err.value.path == "base_model"


def test_models_and_slices_exclusive():
    with pytest.raises(SpecError, match="exactly one of"):
        parse_spec("merge_method: linear\nparameters: {weight: 1}\n")


def test_wrong_type_names_path():
    with pytest.raises(SpecError) as err:
        parse_spec(DARE_TIES.replace("density: 0.6}", "density: lots}", 1))
    assert err.value.path == "models[0].parameters.density"


def test_scientific_notation_strings_are_numbers():
    # YAML 1.1 reads 1e-5 as a string; mergekit accepts it as a number, so do we.
    spec = parse_spec("merge_method: karcher\nmodels:\n  - model: a\n  - model: b\nparameters: {tol: 1e-5}\n")
    assert spec.parameters["tol"] == "1e-5"


@pytest.mark.parametrize("text, expected", [
    ("org/name", ModelRef("org/name")),
    ("org/name@v2", ModelRef("org/name", "v2")),
    ("./models/a", ModelRef("./models/a")),
    ("org/m@abc+org/lora@r1", ModelRef("org/m", "abc", ModelRef("org/lora", "r1"))),
])
def test_model_refs(text, expected):
    assert parse_ref(text) == expected
    assert str(parse_ref(text)) == text


def test_bad_model_ref():
    with pytest.raises(SpecError, match="invalid model reference"):
        parse_ref("org/name@a@b")


def test_sizes():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("500M") == 500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size(1234) == 1234
    with pytest.raises(SpecError):
        parse_size("lots")


def test_real_world_formatting_parses():
    text = (
        "# a comment\r\n"
        "merge_method:   linear   \r\n"
        "models:\r\n"
        "- model: org/a     # trailing comment\r\n"
        "  parameters:\r\n"
        "    weight: 1.0   \r\n"
        "-   model: org/b\r\n"
        "    parameters:\r\n"
        "        weight: 0.5\r\n"
        "dtype: float16\r\n"
    )
    spec = parse_spec(text)
    assert [str(m.model) for m in spec.models] == ["org/a", "org/b"] and spec.dtype == "float16"


_scalars = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=32), st.text(max_size=8))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                       max_leaves=20)
_keys = st.sampled_from(["merge_method", "models", "slices", "base_model", "parameters", "dtype", "tokenizer",
                         "tokenizer_source", "hubmerge", "out_dtype", "chat_template", "x"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_random_documents_parse_or_raise_spec_error(doc):
    import yaml

    try:
        parse_spec(yaml.safe_dump(doc))
    except SpecError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_parses_or_raises_spec_error(text):
    try:
        parse_spec(text)
    except SpecError:
        pass


def test_windows_paths_in_published_configs_map_to_local_folders(tmp_path):
    """Configs copied from Windows name folders like C:\\models\\x; they resolve to ./x beside the spec."""
    from helpers import family, load_folder, run_cli

    family(tmp_path)
    (tmp_path / "nested").mkdir()
    (tmp_path / "math").rename(tmp_path / "nested" / "math")
    spec = tmp_path / "win.yml"
    spec.write_text(
        "merge_method: linear\r\n"
        "models:\r\n"
        "  - model: C:\\Users\\me\\text-generation-webui\\models\\chat   \r\n"
        "    parameters:\r\n"
        "      weight: 0.5\r\n"
        "  - model: nested\\math\r\n"
        "    parameters: {weight: 0.5}\r\n"
        "  - model: 'D:/merges/code'\r\n"
        "    parameters: {weight: 0.25}\r\n"
    )
    out = tmp_path / "out"
    proc = run_cli("merge", str(spec), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Windows path C:\\Users\\me\\text-generation-webui\\models\\chat mapped to the local folder" in proc.stderr
    chat, math, code = (load_folder(tmp_path / p) for p in ("chat", "nested/math", "code"))
    merged = load_folder(out)
    name = "model.layers.0.mlp.up_proj.weight"
    expected = (0.5 * chat[name].float() + 0.5 * math[name].float() + 0.25 * code[name].float()) / 1.25
    torch.testing.assert_close(merged[name].float(), expected, atol=1e-2, rtol=1e-2)

    spec.write_text(spec.read_text().replace("models\\chat", "models\\missing"))
    proc = run_cli("merge", str(spec), "-o", str(out), "--overwrite", cwd=tmp_path)
    assert proc.returncode == 2 and "is a Windows path and no folder 'missing'" in proc.stderr
