"""Candidates of a merge that builds its own tokenizer (a union of vocabularies) are that merge: the
in-memory candidate equals the streamed merge tensor for tensor and is evaluated with the union tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "merge"))
from helpers import load_folder  # noqa: E402
from tokenizer_models import SPECIALS, vocab_model, words  # noqa: E402

from hubmerge.evolve.candidate import CandidateMerger  # noqa: E402
from hubmerge.pipeline.run import MergeOptions, run_merge  # noqa: E402
from hubmerge.spec import parse_spec  # noqa: E402

SPEC = """
merge_method: linear
models:
  - model: base
    parameters: {weight: 0.5}
  - model: chat
    parameters: {weight: {search: [0.0, 1.0]}}
tokenizer_source: union
dtype: float32
"""


def test_union_tokenizer_candidate_equals_the_streamed_merge(tmp_path):
    vocab_model(tmp_path / "base", SPECIALS + words(30), seed=1, dtype="float32")
    vocab_model(tmp_path / "chat", SPECIALS + words(30)[::-1] + ["x0", "x1"], seed=2, dtype="float32")
    spec = parse_spec(SPEC)
    values = {"models[1].parameters.weight": 0.25}
    with CandidateMerger(spec, base_dir=tmp_path) as merger:
        _, weights = merger.merged_weights(values)
        holder = merger.load(values)
        vocab = holder.tokenizer.get_vocab()

    concrete = parse_spec(SPEC.replace("{search: [0.0, 1.0]}", "0.25"))
    streamed = load_folder(run_merge(concrete, tmp_path / "out", MergeOptions(base_dir=tmp_path,
                                                                              show_progress=False)).output)
    assert sorted(weights) == sorted(streamed)
    for name, tensor in streamed.items():
        assert torch.equal(weights[name].to(tensor.dtype), tensor), name
    assert {"x0", "x1"} <= set(vocab) and len(vocab) == len(SPECIALS) + 32
    assert streamed["model.embed_tokens.weight"].shape[0] == len(vocab)
