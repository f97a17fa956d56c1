"""Every registered method on CUDA against the same merge on the CPU (runs only where a GPU is present).

Deterministic methods must agree to float tolerance (kernels differ in summation order); random ones draw
their masks on the CPU from the per-tensor seed, so the same entries are kept on both devices (DELLA may
rank equal magnitudes in another order on the GPU, hence a tolerance of 0.1%).
"""

from __future__ import annotations

import pytest
import torch
from helpers import family, load_folder

from hubmerge.merge.methods.registry import all_methods
from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec import parse_spec

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MODEL_VALUES = {"weight": [0.5, 0.3, 0.4], "density": [0.6, 0.7, 0.5], "gamma": [0.01, 0.02, 0.03],
                "epsilon": [0.1, 0.1, 0.1]}
SHARED_VALUES = {"t": 0.35}


def spec_for(name: str) -> str:
    method = all_methods()[name]
    uses_base = method.base != "ignored"
    names = {"slerp": ["base", "chat"], "nearswap": ["base", "chat"], "arcee_fusion": ["base", "chat"],
             "nuslerp": ["chat", "math"], "passthrough": ["chat"]}.get(name, ["chat", "math", "code"])
    lines = [f"merge_method: {name}"] + (["base_model: base"] if uses_base else []) + ["models:"]
    for i, model in enumerate(names):
        params = {p.name: MODEL_VALUES[p.name][i] for p in method.params
                  if p.scope == "model" and p.name in MODEL_VALUES and (p.required or p.name != "weight")}
        if name == "linear":
            params["weight"] = MODEL_VALUES["weight"][i]
        lines.append(f"  - model: {model}" + (f"\n    parameters: {params}".replace("'", "") if params else ""))
    shared = {p.name: SHARED_VALUES[p.name] for p in method.params if p.scope == "shared" and p.name in SHARED_VALUES}
    if shared:
        lines.append(f"parameters: {shared}".replace("'", ""))
    return "\n".join(lines) + "\ndtype: float32\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    family(root, dtype="bfloat16")
    return root


@pytest.mark.parametrize("name", sorted(all_methods()))
def test_cuda_agrees_with_cpu(models, tmp_path, name):
    method = all_methods()[name]
    spec = parse_spec(spec_for(name))
    options = dict(base_dir=models, show_progress=False, overwrite=True)
    cpu = load_folder(run_merge(spec, tmp_path / "cpu", MergeOptions(**options)).output)
    gpu_run = run_merge(spec, tmp_path / "gpu", MergeOptions(device="cuda", **options))
    gpu = load_folder(gpu_run.output)
    assert sorted(cpu) == sorted(gpu)
    for k in cpu:
        assert cpu[k].dtype == gpu[k].dtype and cpu[k].shape == gpu[k].shape, k
        assert torch.isfinite(gpu[k].float()).all(), k
    if not method.random:
        for k in cpu:
            torch.testing.assert_close(gpu[k].float(), cpu[k].float(), atol=2e-2, rtol=2e-2, msg=k)
        return
    again = run_merge(spec, tmp_path / "again", MergeOptions(device="cuda", **options))
    assert again.content_hash == gpu_run.content_hash  # seeded per tensor name on the device too
    base = load_folder(models / "base")
    for k in cpu:
        if ".layers." in k and cpu[k].dim() == 2:
            kept_cpu = cpu[k] != base[k].to(cpu[k].dtype)
            kept_gpu = gpu[k] != base[k].to(gpu[k].dtype)
            assert 0 < float(kept_cpu.float().mean()) < 1, k  # a real mask, not all or nothing
            assert float((kept_cpu == kept_gpu).float().mean()) > 0.999, k
