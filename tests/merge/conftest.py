"""Tiny models built by transformers, shared by the module tests (built once per session)."""

from __future__ import annotations

import json
import shutil

import pytest
from arch_models import build_family, hub_layout, multimodal_configs

# Families whose Hub checkpoints differ from what transformers 5 writes: the tests use the Hub form (which both
# transformers and mergekit read); "<family>-native" keeps the form transformers wrote.
HUB_REWRITTEN = ("gemma3", "qwen2_vl")


@pytest.fixture(scope="session")
def multimodal_models(tmp_path_factory):
    """{family: root}, each root holding m0, m1, m2 (seeds 0, 1, 2)."""
    root = tmp_path_factory.mktemp("multimodal")
    out = {}
    for family, (config, model_class) in multimodal_configs().items():
        folders = build_family(root / family, lambda c=config: c, model_class)
        for i, folder in enumerate(folders):
            # a processor file the merge carries over from the base (mergekit's "tagalong" files)
            (folder / "preprocessor_config.json").write_text(json.dumps({"model": i, "family": family}) + "\n")
        if family in HUB_REWRITTEN:
            shutil.copytree(root / family, root / f"{family}-native")
            out[f"{family}-native"] = root / f"{family}-native"
            for folder in folders:
                hub_layout(folder, family)
        out[family] = root / family
    return out
