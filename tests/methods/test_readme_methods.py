"""The README's method table stays in step with the registry."""

import re
from pathlib import Path

from hubmerge.merge.methods.registry import all_methods


def test_every_registered_method_is_documented_with_its_parameters():
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", readme, re.M)}
    for name, method in all_methods().items():
        assert name in rows, f"README lacks a row for {name}"
        for p in method.params:
            assert f"`{p.name}`" in rows[name], f"README row for {name} lacks parameter {p.name}"
