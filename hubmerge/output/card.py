"""The model card (README.md) of a merge: Hub metadata, what was merged and how to rebuild it."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import yaml

from hubmerge import __version__
from hubmerge.merge.plan import MergePlan
from hubmerge.spec.yamlio import dump_yaml

BEGIN = "<!-- hubmerge:begin -->"
END = "<!-- hubmerge:end -->"


def card_metadata(plan: MergePlan, digest: str) -> dict[str, Any]:
    spec = plan.spec
    hub_ids = [m.name for m in plan.models if m.is_hub]
    tags = ["merge", "hubmerge", spec.merge_method]
    if not spec.hubmerge.extra.get("non_mergekit"):
        tags.insert(1, "mergekit")
    meta: dict[str, Any] = {}
    if hub_ids:
        meta["base_model"] = hub_ids
        meta["base_model_relation"] = "merge"
    meta["library_name"] = "transformers"
    meta["tags"] = tags
    if spec.hubmerge.license:
        meta["license"] = spec.hubmerge.license
    meta["hubmerge"] = pinned_recipe_block(plan, digest)
    return meta


def pinned_recipe_block(plan: MergePlan, digest: str) -> dict[str, Any]:
    import safetensors
    import torch

    pinned = {m.name: m.revision for m in plan.models if m.revision}
    return {
        "recipe": {k: v for k, v in plan.spec.raw.items() if k != "hubmerge"},
        "pinned": pinned,
        "content_hash": digest,
        "versions": {"hubmerge": __version__, "torch": torch.__version__.split("+")[0],
                     "safetensors": safetensors.__version__, "python": platform.python_version()},
    }


def render_card(plan: MergePlan, digest: str, *, title: str) -> str:
    meta = card_metadata(plan, digest)
    spec = plan.spec
    lines = [BEGIN, f"# {title}", "",
             f"This model is a merge made with [hubmerge](https://github.com/org/hubmerge) using the "
             f"**{spec.merge_method}** method.", "", "## Sources", "",
             "| model | revision |", "|---|---|"]
    for m in plan.models:
        rev = m.revision[:12] if m.revision else "local"
        lines.append(f"| {m.name} | {rev} |")
    lines += ["", "## Recipe", "", "```yaml", dump_yaml(meta["hubmerge"]["recipe"]).rstrip(), "```", "",
              f"Content hash of the merged tensors: `{digest}`", "", END]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(lines) + "\n"


def write_card(plan: MergePlan, digest: str, folder: Path, *, title: str | None = None) -> None:
    (folder / "README.md").write_text(render_card(plan, digest, title=title or folder.name), encoding="utf-8")
