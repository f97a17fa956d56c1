"""Row-wise methods merge large tensors a block of rows at a time (merge/executor.py), bit for bit the same.

The whole-tensor merge is the reference: the same plan run through the executor without a part sink. A
block's inputs are sub-ranges of the files, so only readers that read byte ranges take part; a LoRA input
folds whole tensors, and its model's tensors are merged whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import family, load_folder
from sources.lora_adapters import peft_adapter

from hubmerge.merge.executor import ROW_BLOCK_BYTES, StreamingExecutor
from hubmerge.pipeline.run import MergeOptions, plan_spec, run_merge
from hubmerge.spec.parse import parse_spec

# An embedding (and head) of 2.6 MB x 4 = 10.5 MB in float32: larger than a block; layers are small.
SHAPE = {"vocab": 5120, "hidden": 512, "intermediate": 256, "layers": 2}
SPECS = {
    "linear": "merge_method: linear\nmodels:\n  - {model: base, parameters: {weight: 0.3}}\n"
              "  - {model: chat, parameters: {weight: 0.7}}\n",
    "task_arithmetic": "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
                       "  - {model: chat, parameters: {weight: 0.6}}\n  - {model: math, parameters: {weight: 0.3}}\n",
    "nearswap": "merge_method: nearswap\nbase_model: base\nmodels:\n  - model: base\n  - model: chat\n"
                "parameters: {t: 0.001}\n",
    "passthrough": "merge_method: passthrough\nslices:\n  - sources: [{model: chat, layer_range: [0, 2]}]\n"
                   "parameters: {scale: [{filter: embed, value: 0.5}, {value: 1.0}]}\n",
}


@pytest.fixture(scope="module")
def local_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("blocks")
    family(root, dtype="float32", **SHAPE)
    return root


def _run(plan, *, blocks: bool) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    parts: dict[str, list[torch.Tensor]] = {}
    whole: dict[str, torch.Tensor] = {}
    executor = StreamingExecutor(plan, show_progress=False)
    executor.run(plan.tensors, lambda n, t: whole.__setitem__(n, t.clone()),
                 (lambda n, t: parts.setdefault(n, []).append(t.clone())) if blocks else None)
    for name, pieces in parts.items():
        whole[name] = torch.cat(pieces)
    return whole, {n: len(p) for n, p in parts.items()}


@pytest.mark.parametrize("method", sorted(SPECS))
def test_blocks_of_rows_equal_the_whole_tensor(local_family, method):
    plan = plan_spec(parse_spec(SPECS[method]), base_dir=local_family)
    try:
        reference, _ = _run(plan, blocks=False)
        blocked, counts = _run(plan, blocks=True)
    finally:
        for m in plan.models:
            m.close()
    assert sorted(blocked) == sorted(reference)
    assert all(torch.equal(blocked[k], reference[k]) for k in reference)
    big = [t.name for t in plan.tensors if max(i.info.nbytes for i in t.inputs) > ROW_BLOCK_BYTES]
    assert big and all(counts.get(name, 0) >= 2 for name in big)  # those came in blocks
    assert not set(counts) - set(big)  # and only those


def test_selection_methods_and_folded_inputs_merge_whole(local_family, tmp_path):
    ties = parse_spec("merge_method: ties\nbase_model: base\nmodels:\n"
                      "  - {model: chat, parameters: {weight: 0.5, density: 0.5}}\n")
    plan = plan_spec(ties, base_dir=local_family)
    try:
        assert _run(plan, blocks=True)[1] == {}  # a global top-k needs the whole tensor
    finally:
        for m in plan.models:
            m.close()
    adapter = peft_adapter(local_family / "base", tmp_path / "adapter", r=4, lora_alpha=8,
                           target_modules=["embed_tokens", "q_proj"])
    spec = parse_spec(f"merge_method: linear\nmodels:\n  - {{model: base+{adapter}, parameters: {{weight: 0.5}}}}\n"
                      "  - {model: chat, parameters: {weight: 0.5}}\n")
    plan = plan_spec(spec, base_dir=local_family)
    try:
        reference, _ = _run(plan, blocks=False)
        blocked, counts = _run(plan, blocks=True)
    finally:
        for m in plan.models:
            m.close()
    assert counts == {}  # the folded model's reader reads whole tensors only
    assert all(torch.equal(blocked[k], reference[k]) for k in reference)


def test_merge_with_blocks_writes_the_same_folder(local_family, tmp_path: Path):
    spec = parse_spec(SPECS["linear"])
    small = run_merge(spec, tmp_path / "a", MergeOptions(base_dir=local_family, show_progress=False,
                                                         max_shard_size=3_000_000))
    plan = plan_spec(spec, base_dir=local_family)
    try:
        reference, _ = _run(plan, blocks=False)
    finally:
        for m in plan.models:
            m.close()
    merged = load_folder(tmp_path / "a")
    assert sorted(merged) == sorted(reference) and all(torch.equal(merged[k], reference[k]) for k in reference)
    assert len(small.shards) >= 3  # blocks crossed no shard boundary wrongly: every shard reads back whole
