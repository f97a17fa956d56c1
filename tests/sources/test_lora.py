"""LoRA adapters folded into model tensors as they are read, checked against PEFT's merge_and_unload
and the formula, and the errors for adapters that do not fit."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from sources.lora_adapters import hand_adapter, peft_adapter, peft_merged

from hubmerge.demo import TinyShape, base_weights, write_model
from hubmerge.errors import SourceError
from hubmerge.sources.open import open_model
from hubmerge.spec.model import ModelRef
from hubmerge.spec.parse import parse_ref

pytest.importorskip("peft")

SHAPE = TinyShape(layers=2)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-bases")
    weights = base_weights(SHAPE, 7)
    return {dtype: write_model(root / f"base-{dtype}", weights, SHAPE, dtype=dtype)
            for dtype in ("float32", "bfloat16")}


def _read_all(ref: ModelRef, **kw) -> dict[str, torch.Tensor]:
    src = open_model(ref, **kw)
    try:
        infos = list(src.tensors.values())
        if hasattr(src.reader, "expect"):
            src.reader.expect(infos)
        return {i.name: src.reader.read(i) for i in infos}
    finally:
        src.close()


CONFIGS = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    "rslora": dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "o_proj", "up_proj"]),
    "patterns": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "gate_proj"],
                     rank_pattern={"layers.1.self_attn.q_proj": 2, "gate_proj": 6},
                     alpha_pattern={"k_proj": 3, r"layers\.0\.mlp\.gate_proj": 20}),
    "embedding_and_modules_to_save": dict(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"],
                                          modules_to_save=["lm_head"]),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_fold_equals_peft_merge_and_unload(tmp_path, bases, kind, dtype):
    if kind == "embedding_and_modules_to_save" and dtype == "bfloat16":
        pytest.skip("PEFT rounds embedding deltas to bf16 before adding: see tests/merge/test_lora_merge.py")
    base = bases[dtype]
    adapter = peft_adapter(base, tmp_path / "adapter", seed=3, **CONFIGS[kind])
    ours = _read_all(ModelRef(str(base), None, ModelRef(str(adapter))))
    theirs = peft_merged(base, adapter)
    plain = _read_all(ModelRef(str(base)))
    changed = [k for k in ours if not torch.equal(ours[k], plain[k])]
    assert changed, "the adapter changed nothing: the test would pass without the fold"
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype == plain[name].dtype, name
        assert torch.equal(tensor, theirs[name]), f"{name} differs from PEFT by {(tensor.float() - theirs[name].float()).abs().max()}"


def test_bf16_adapter_factors_fold_like_peft(tmp_path, bases):
    """Adapters published in bf16: PEFT upcasts the factors to float32 before folding, and so do we."""
    base = bases["bfloat16"]
    adapter = peft_adapter(base, tmp_path / "adapter", seed=5, dtype=torch.bfloat16, **CONFIGS["plain"])
    ours = _read_all(ModelRef(str(base), None, ModelRef(str(adapter))))
    theirs = peft_merged(base, adapter)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_fan_in_fan_out_conv1d_layers(tmp_path):
    """GPT-2 keeps its weights as (in, out) Conv1D: the product is transposed (fan_in_fan_out)."""
    shape = TinyShape(arch="gpt2", layers=2)
    base = write_model(tmp_path / "gpt2", base_weights(shape, 11), shape, dtype="float32")
    adapter = peft_adapter(base, tmp_path / "adapter", seed=2, r=4, lora_alpha=16, fan_in_fan_out=True,
                           target_modules=["c_attn", "c_proj"])
    ours = _read_all(ModelRef(str(base), None, ModelRef(str(adapter))))
    theirs = peft_merged(base, adapter)
    plain = _read_all(ModelRef(str(base)))
    assert not torch.equal(ours["transformer.h.0.attn.c_attn.weight"], plain["transformer.h.0.attn.c_attn.weight"])
    assert not torch.equal(ours["transformer.h.1.attn.c_proj.weight"], plain["transformer.h.1.attn.c_proj.weight"])
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.parametrize("rslora", [False, True])
def test_fold_formula_on_a_hand_written_adapter(tmp_path, bases, rslora):
    """No PEFT involved: W' = W + alpha/r * B @ A (alpha/sqrt(r) with rslora), in float32, cast to bf16."""
    base = bases["bfloat16"]
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(3, SHAPE.hidden, generator=gen)
    b = torch.randn(SHAPE.hidden, 3, generator=gen)
    adapter = hand_adapter(tmp_path / "adapter", {
        "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight": a,
        "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight": b,
    }, r=3, lora_alpha=5, use_rslora=rslora)
    ours = _read_all(ModelRef(str(base), None, ModelRef(str(adapter))))
    plain = load_file(str(base / "model.safetensors"))
    w = plain["model.layers.1.self_attn.q_proj.weight"]
    scale = 5 / math.sqrt(3) if rslora else 5 / 3
    expected = (w.double() + scale * (b.double() @ a.double())).to(torch.bfloat16)
    got = ours["model.layers.1.self_attn.q_proj.weight"]
    # float32 arithmetic may land one bf16 step away from the float64 value, no further
    assert torch.allclose(got.double(), expected.double(), rtol=2 ** -7, atol=0)
    assert (got != w).float().mean() > 0.9
    untouched = [k for k in plain if k != "model.layers.1.self_attn.q_proj.weight"]
    assert all(torch.equal(ours[k], plain[k]) for k in untouched)


def test_model_plus_adapter_ref_and_dict_form_parse_to_the_same_source(tmp_path, bases):
    from hubmerge.spec import parse_spec

    base = bases["float32"]
    adapter = peft_adapter(base, tmp_path / "adapter", seed=1, **CONFIGS["plain"])
    ref = parse_ref(f"{base}+{adapter}")
    spec = parse_spec(f"merge_method: passthrough\nmodels:\n  - model: {{model: {base}, lora: {adapter}}}\n")
    assert spec.models[0].model == ref
    assert _read_all(ref).keys() == _read_all(spec.models[0].model).keys()


# -- errors: found when the source is opened, before any data is read ----------------------------------


def _lora_pair(module: str, r: int, out: int, inp: int) -> dict[str, torch.Tensor]:
    return {f"base_model.model.{module}.lora_A.weight": torch.zeros(r, inp),
            f"base_model.model.{module}.lora_B.weight": torch.zeros(out, r)}


def test_target_missing_from_the_model(tmp_path, bases):
    adapter = hand_adapter(tmp_path / "adapter", _lora_pair("model.layers.9.self_attn.q_proj", 4, 64, 64),
                           base_model_name_or_path="org/other-model")
    with pytest.raises(SourceError) as err:
        open_model(ModelRef(str(bases["float32"]), None, ModelRef(str(adapter))))
    message = err.value.message
    assert f"{adapter}/adapter_model.safetensors" in message and "model.layers.9.self_attn.q_proj.lora_A.weight" in message
    assert "model.layers.9.self_attn.q_proj.weight" in message and "org/other-model" in err.value.hint


def test_shape_mismatch_names_adapter_file_and_tensor(tmp_path, bases):
    adapter = hand_adapter(tmp_path / "adapter", _lora_pair("model.layers.0.self_attn.q_proj", 4, 96, 64))
    with pytest.raises(SourceError, match=r"does not fit 'model\.layers\.0\.self_attn\.q_proj\.weight' \[64, 64\]") as err:
        open_model(ModelRef(str(bases["float32"]), None, ModelRef(str(adapter))))
    assert "q_proj.lora_A.weight" in err.value.message


def test_rank_disagreeing_with_config(tmp_path, bases):
    adapter = hand_adapter(tmp_path / "adapter", _lora_pair("model.layers.0.self_attn.q_proj", 2, 64, 64), r=4)
    with pytest.raises(SourceError, match="rank 2, but .*adapter_config.json gives r=4"):
        open_model(ModelRef(str(bases["float32"]), None, ModelRef(str(adapter))))


def test_missing_partner_factor(tmp_path, bases):
    pair = _lora_pair("model.layers.0.self_attn.q_proj", 4, 64, 64)
    pair.pop("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
    adapter = hand_adapter(tmp_path / "adapter", pair)
    with pytest.raises(SourceError, match="lora_B tensor is missing"):
        open_model(ModelRef(str(bases["float32"]), None, ModelRef(str(adapter))))


@pytest.mark.parametrize("switch", ["use_dora", "lora_bias", "trainable_token_indices"])
def test_unsupported_variants_are_refused_by_name(tmp_path, bases, switch):
    value = [1, 2] if switch == "trainable_token_indices" else True
    adapter = hand_adapter(tmp_path / "adapter", _lora_pair("model.layers.0.self_attn.q_proj", 4, 64, 64),
                           **{switch: value})
    with pytest.raises(SourceError, match=switch) as err:
        open_model(ModelRef(str(bases["float32"]), None, ModelRef(str(adapter))))
    assert "merge_and_unload" in err.value.hint


def test_dora_magnitude_tensor_is_refused(tmp_path, bases):
    tensors = _lora_pair("model.layers.0.self_attn.q_proj", 4, 64, 64)
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(64)
    adapter = hand_adapter(tmp_path / "adapter", tensors)
    with pytest.raises(SourceError, match="DoRA"):
        open_model(ModelRef(str(bases["float32"]), None, ModelRef(str(adapter))))


def test_resized_vocabulary_is_refused(tmp_path, bases):
    adapter = hand_adapter(tmp_path / "adapter", {"base_model.model.lm_head.weight": torch.zeros(130, 64)})
    with pytest.raises(SourceError, match=r"shape \[130, 64\].*'lm_head.weight'") as err:
        open_model(ModelRef(str(bases["float32"]), None, ModelRef(str(adapter))))
    assert "vocabulary" in err.value.hint


def test_folder_without_adapter_config(tmp_path, bases):
    folder = tmp_path / "not-an-adapter"
    folder.mkdir()
    save_file(_lora_pair("model.layers.0.self_attn.q_proj", 4, 64, 64), str(folder / "adapter_model.safetensors"))
    with pytest.raises(SourceError, match="no adapter_config.json") as err:
        open_model(ModelRef(str(bases["float32"]), None, ModelRef(str(folder))))
    assert "PEFT" in err.value.hint


def test_non_lora_peft_type(tmp_path, bases):
    adapter = hand_adapter(tmp_path / "adapter", _lora_pair("model.layers.0.self_attn.q_proj", 4, 64, 64))
    doc = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**doc, "peft_type": "IA3"}))
    with pytest.raises(SourceError, match="peft_type 'IA3' is not supported"):
        open_model(ModelRef(str(bases["float32"]), None, ModelRef(str(adapter))))


def test_pickle_adapter_needs_allow_pickle(tmp_path, bases):
    folder = tmp_path / "adapter"
    hand_adapter(folder, _lora_pair("model.layers.0.self_attn.q_proj", 4, 64, 64))
    pair = load_file(str(folder / "adapter_model.safetensors"))
    pair = {k: torch.randn(v.shape) for k, v in pair.items()}
    (folder / "adapter_model.safetensors").unlink()
    torch.save(pair, folder / "adapter_model.bin")
    ref = ModelRef(str(bases["float32"]), None, ModelRef(str(folder)))
    with pytest.raises(SourceError, match="adapter_model.bin.*arbitrary code"):
        open_model(ref)
    folded = _read_all(ref, allow_pickle=True)["model.layers.0.self_attn.q_proj.weight"]
    w = load_file(str(bases["float32"] / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    a = pair["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = pair["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert torch.equal(folded, w + (b @ a) * 2.0)
