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


def card_metadata(plan: MergePlan, digest: str, *, device: str = "cpu") -> dict[str, Any]:
    spec = plan.spec
    hub_ids = [m.name for m in plan.models if m.is_hub]
    tags = ["merge", "hubmerge", spec.merge_method]
    if plan.method.in_mergekit:
        tags.insert(1, "mergekit")
    meta: dict[str, Any] = {}
    if hub_ids:
        meta["base_model"] = hub_ids
        meta["base_model_relation"] = "merge"
    meta["library_name"] = "transformers"
    meta["tags"] = tags
    if spec.hubmerge.license:
        meta["license"] = spec.hubmerge.license
    meta["hubmerge"] = pinned_recipe_block(plan, digest, device=device)
    return meta


def pinned_recipe_block(plan: MergePlan, digest: str, *, device: str = "cpu") -> dict[str, Any]:
    """The recipe with every Hub source pinned to its commit SHA, plus what is needed to verify it."""
    import safetensors
    import torch

    from hubmerge.spec.pin import pinned_document

    pins = {m.name: m.revision for m in plan.models if m.is_hub and m.revision}
    recipe = pinned_document(plan.spec.raw, pins)
    options = dict(recipe.get("hubmerge") or {})
    for recorded in ("pinned", "content_hash", "versions", "device", "generated"):
        options.pop(recorded, None)
    if options:
        recipe["hubmerge"] = options
    else:
        recipe.pop("hubmerge", None)
    return {
        "recipe": recipe,
        "content_hash": digest,
        "dtype": plan.tensors[0].dtype if plan.tensors else None,
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "versions": {"hubmerge": __version__, "torch": torch.__version__.split("+")[0],
                     "safetensors": safetensors.__version__, "python": platform.python_version()},
    }


def render_card(plan: MergePlan, digest: str, *, title: str, device: str = "cpu") -> str:
    meta = card_metadata(plan, digest, device=device)
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


def write_card(plan: MergePlan, digest: str, folder: Path, *, title: str | None = None,
               existing: str | None = None, device: str = "cpu") -> None:
    card = render_card(plan, digest, title=title or folder.name, device=device)
    if existing:
        card = update_readme(existing, card)
    (folder / "README.md").write_text(card, encoding="utf-8")


OUR_KEYS = ("base_model", "base_model_relation", "library_name", "hubmerge")


def split_front_matter(text: str, *, source: str = "README.md") -> tuple[dict[str, Any], str]:
    """(metadata, body) of a README; a README without front matter has empty metadata."""
    from hubmerge.errors import HubmergeError

    if not text.startswith("---"):
        return {}, text
    lines = text.splitlines(keepends=True)
    for i in range(1, len(lines)):
        if lines[i].rstrip() == "---":
            try:
                meta = yaml.safe_load("".join(lines[1:i])) or {}
            except yaml.YAMLError as exc:
                raise HubmergeError(f"{source}: the front matter is not valid YAML ({exc})",
                                    hint="fix the metadata block at the top of the README") from None
            if not isinstance(meta, dict):
                raise HubmergeError(f"{source}: the front matter must be a mapping")
            return meta, "".join(lines[i + 1:])
    return {}, text


def update_readme(existing: str, generated: str) -> str:
    """Our keys and our delimited section replaced; the user's other keys, tags and prose kept."""
    old_meta, old_body = split_front_matter(existing)
    new_meta, new_body = split_front_matter(generated)
    meta = dict(old_meta)
    for key in OUR_KEYS:
        meta.pop(key, None)
    for key, value in new_meta.items():
        if key == "tags":
            user_tags = [t for t in (old_meta.get("tags") or []) if t not in value]
            meta["tags"] = list(value) + user_tags
        elif key == "license" and "license" in old_meta:
            continue  # the user's explicit license wins over the inherited one
        else:
            meta[key] = value
    section = new_body.strip("\n")
    if BEGIN in old_body and END in old_body:
        head, rest = old_body.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        body = head + section + tail
    else:
        body = "\n" + section + "\n" + (("\n" + old_body.strip("\n") + "\n") if old_body.strip() else "")
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n" + (body if body.startswith("\n") else "\n" + body)
