"""Differential tests: the same spec through mergekit-yaml 0.1.5 and hubmerge, every tensor bitwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import assert_same_tensors, family, load_folder, run_mergekit

from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec import parse_spec

pytestmark = pytest.mark.mergekit

if shutil.which("mergekit-yaml") is None and not Path(__import__("sys").executable).with_name("mergekit-yaml").exists():
    pytest.skip("mergekit 0.1.5 is not installed", allow_module_level=True)

SPECS = {
    "linear_gradient_filters": """
merge_method: linear
base_model: base
models:
  - model: chat
    parameters:
      weight: [{filter: self_attn, value: [0.1, 0.9]}, {filter: mlp, value: 0.7}, {value: 0.5}]
  - model: math
    parameters: {weight: 0.3}
  - model: base
    parameters: {weight: [0.2, 0.4, 0.1]}
parameters: {normalize: true}
""",
    "linear_no_normalize_implicit_base": """
merge_method: linear
base_model: base
models:
  - model: chat
    parameters: {weight: 0.6}
  - model: code
    parameters: {weight: 0.25}
parameters: {normalize: false, weight: 0.15}
""",
    "slerp_slices_gradient": """
merge_method: slerp
base_model: base
slices:
  - sources:
      - {model: base, layer_range: [0, 4]}
      - {model: chat, layer_range: [0, 4]}
parameters:
  t:
    - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}
    - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}
    - value: 0.5
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: base
models:
  - model: chat
    parameters: {weight: 0.7}
  - model: math
    parameters: {weight: [0.2, 0.9]}
parameters: {lambda: 0.8}
""",
    "ties_density_filters": """
merge_method: ties
base_model: base
models:
  - model: chat
    parameters: {weight: 0.5, density: 0.6}
  - model: math
    parameters: {weight: [{filter: mlp, value: 0.8}, {value: 0.3}], density: [0.3, 0.9]}
  - model: code
    parameters: {weight: 0.4, density: 0.5}
parameters: {normalize: true, int8_mask: true}
""",
    "dare_ties_full_density": """
merge_method: dare_ties
base_model: base
models:
  - model: chat
    parameters: {weight: 0.5, density: 1.0}
  - model: code
    parameters: {weight: 0.5, density: 1.0}
""",
    "passthrough_frankenmerge": """
merge_method: passthrough
slices:
  - sources: [{model: base, layer_range: [0, 3]}]
  - sources:
      - model: chat
        layer_range: [1, 4]
        parameters:
          scale: [{filter: o_proj, value: 0.5}, {filter: down_proj, value: 0.0}, {value: 1.0}]
  - sources: [{model: math, layer_range: [2, 3]}]
""",
    "ties_slices_with_slice_parameters": """
merge_method: ties
base_model: base
slices:
  - sources:
      - {model: base, layer_range: [0, 2]}
      - {model: chat, layer_range: [0, 2], parameters: {weight: 0.6}}
      - {model: math, layer_range: [0, 2]}
    parameters: {density: 0.5, weight: 0.3}
  - sources:
      - {model: base, layer_range: [2, 4]}
      - {model: chat, layer_range: [2, 4]}
      - {model: math, layer_range: [2, 4], parameters: {density: [0.9, 0.1]}}
    parameters: {weight: 0.5, density: 0.7}
parameters: {normalize: false}
""",
}

VARIANTS = [("llama", "bfloat16", None), ("qwen2", "bfloat16", None), ("llama", "float32", None),
            ("qwen2", "float16", "float32")]


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    out = {}
    for arch, dtype, _ in VARIANTS:
        key = (arch, dtype)
        if key not in out:
            root = tmp_path_factory.mktemp(f"{arch}-{dtype}")
            family(root, arch=arch, dtype=dtype)
            out[key] = root
    return out


@pytest.mark.parametrize("arch, dtype, spec_dtype", VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_bitwise_equal_to_mergekit(families, tmp_path, name, arch, dtype, spec_dtype, request):
    if arch == "qwen2" and name == "passthrough_frankenmerge":
        # mergekit 0.1.5 cannot save a Qwen2 config whose layer count changed: it leaves `layer_types` at the
        # old length and transformers rejects it. Our side of this case is covered in tests/e2e.
        request.applymarker(pytest.mark.xfail(reason="mergekit 0.1.5 bug: layer_types not resized", strict=True))
    root = families[(arch, dtype)]
    text = SPECS[name] + (f"dtype: {spec_dtype}\n" if spec_dtype else "")
    spec_path = root / f"{name}-{spec_dtype}.yml"
    spec_path.write_text(text)
    theirs = tmp_path / "mergekit"
    run_mergekit(spec_path, theirs)
    ours = tmp_path / "hubmerge"
    run_merge(parse_spec(text), ours, MergeOptions(base_dir=root, show_progress=False, max_shard_size=200_000))
    assert_same_tensors(load_folder(ours), load_folder(theirs))
