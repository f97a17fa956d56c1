"""rank_pattern / alpha_pattern keys matched as PEFT matches them (checked against PEFT's own function on
generated patterns and names), in bounded time for keys that make Python's re backtrack for ever."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import run_cli
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sources.lora_adapters import hand_adapter

from hubmerge.demo import TinyShape, base_weights, write_model
from hubmerge.errors import SourceError
from hubmerge.sources.lora import parse_adapter_config
from hubmerge.sources.peft_patterns import PatternError, compile_key, new_budget, pattern_key

get_pattern_key = pytest.importorskip("peft.utils.other").get_pattern_key

NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.10.mlp.down_proj",
         "model.layers.1.mlp.gate_proj", "model.embed_tokens", "lm_head", "q_proj", "layers.0.q_proj",
         "model.layers.0.self_attn.q_proj\n", "a\n.q_proj", "x..q_proj", ".q_proj", ""]

# Regex fragments close to what adapters use, combined into keys by the strategy below.
ATOMS = ["q_proj", "k_proj", "proj", "mlp", "layers", "self_attn", "model", "0", "1", "10", ".", r"\.", r"\d",
         r"\d+", "[0-9]", "[^.]", "[qk]", r"\w", r"\s", "_", "^", "$", r"\b", r"\B", r"\A", r"\Z", "(?s:.)",
         "(?m:$)", "\n"]


def _keys():
    atom = st.sampled_from(ATOMS)

    def extend(inner):
        return st.one_of(
            st.lists(inner, min_size=1, max_size=4).map("".join),
            st.tuples(inner, st.sampled_from(["*", "+", "?", "*?", "{1,2}", "{2}", "+?"])).map(
                lambda t: f"(?:{t[0]}){t[1]}"),
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(" + "|".join(xs) + ")"),
        )

    return st.recursive(atom, extend, max_leaves=6)


@seed(20)
@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(keys=st.lists(_keys(), min_size=1, max_size=4, unique=True),
       name=st.one_of(st.sampled_from(NAMES), st.text(alphabet="qkproj_.01\nmlayers", max_size=24)))
def test_same_key_as_peft(keys, name):
    patterns = dict.fromkeys(keys, 1)
    assert pattern_key(patterns, name) == get_pattern_key(list(patterns), name), (keys, name)


@pytest.mark.parametrize("key", ["q_proj", "model.layers.0.self_attn.q_proj", r"layers\.\d+\.mlp\..*",
                                 "layers.(0|1).self_attn.q_proj", "a)|(b", "lm_h.ad", ".*", "down_proj|q_proj",
                                 r"\bq_proj", "[^x]_proj", "q_proj\n?"])
@pytest.mark.parametrize("name", NAMES)
def test_known_keys_like_peft(key, name):
    assert (pattern_key({key: 1}, name) == key) == (get_pattern_key([key], name) == key)


def test_catastrophic_key_is_linear():
    # With re.match this runs for hours (nested quantifiers on a 93-character name that never ends in X).
    name = "model.layers.0.self_attn.q_proj" * 3
    budget = new_budget()
    assert pattern_key({"([a-z_.0-9]+)+X": 8}, name, budget) == name
    assert new_budget()[0] - budget[0] < 100_000  # steps spent: a few per character and state


@pytest.mark.parametrize("key, why", [(r"(a)\1", "backreferences"), ("(?=q)q_proj", "lookahead"),
                                      ("q_proj++", "possessive"), ("(?>q)", "atomic"), ("(?i:Q_PROJ)", "flag"),
                                      ("(?i)q_proj", "not a valid regular expression"), ("(", "not a valid"),
                                      ("a{1000}{3}", "not a valid"), ("(?:a{1000}){9}", "too complex"),
                                      ("x" * 1001, "longer than")])
def test_refused_keys_name_why(key, why):
    with pytest.raises(PatternError, match=why):
        compile_key(key)
    doc = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {key: 2}}
    with pytest.raises(SourceError, match=r"adapter_config.json: rank_pattern key .*" + re.escape(why)):
        parse_adapter_config(doc, "adapter")


def test_step_budget_refuses_in_one_line():
    key = "(" + "|".join(f"(?:[a-z_.0-9]*){i}" for i in range(40)) + ")X"
    with pytest.raises(PatternError, match="takes too long"):
        budget = [50_000]
        for i in range(100):
            compile_key(key).matches(f"model.layers.{i}.self_attn.q_proj", budget)


def test_validate_with_a_hostile_pattern_finishes(tmp_path):
    shape = TinyShape(layers=2)
    base = write_model(tmp_path / "base", base_weights(shape, 1), shape, dtype="float32")
    h = shape.hidden
    factors = {}
    for layer in range(2):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        factors[f"{prefix}.lora_A.weight"] = torch.randn(4, h)
        factors[f"{prefix}.lora_B.weight"] = torch.randn(h, 4)
    adapter = hand_adapter(tmp_path / "adapter", factors, alpha_pattern={"([a-z_.0-9]+)+X": 8},
                           rank_pattern={"([a-z_.0-9]+)+X": 8})
    spec = tmp_path / "s.yml"
    spec.write_text(f"merge_method: passthrough\nmodels:\n  - model: {base}+{adapter}\ndtype: float32\n")
    proc = run_cli("validate", str(spec), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
