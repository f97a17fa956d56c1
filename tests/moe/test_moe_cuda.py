"""``gate_mode: hidden`` with the hidden states on CUDA (runs only where a GPU is present): the router rows
agree with the CPU's to bfloat16 tolerance (GPU kernels round differently), everything else is bitwise
equal (copying and scaling always runs on the CPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import load_folder
from moe_models import dense_family

from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec import parse_spec

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

RECIPE = """
base_model: base
gate_mode: hidden
experts:
  - source_model: e1
    positive_prompts: ["w5 w6 w7", "w8"]
  - source_model: e2
    positive_prompts: ["w30 w31 w32"]
    negative_prompts: ["w1 w2"]
"""


def test_hidden_states_on_cuda_match_the_cpu(tmp_path):
    dense_family(tmp_path, "llama", names=("base", "e1", "e2"), seed=21)
    out = {}
    for device in ("cpu", "cuda"):
        run_merge(parse_spec(RECIPE), tmp_path / device, MergeOptions(base_dir=tmp_path, device=device,
                                                                      show_progress=False))
        out[device] = load_folder(tmp_path / device)
    cpu, gpu = out["cpu"], out["cuda"]
    assert sorted(cpu) == sorted(gpu)
    for name in cpu:
        if name.endswith("mlp.gate.weight"):
            assert torch.allclose(cpu[name].float(), gpu[name].float(), atol=2e-2), name
        else:
            assert torch.equal(cpu[name], gpu[name]), name
