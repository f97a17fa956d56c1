"""A README's front matter (the YAML block between ``---`` lines the Hub reads as card metadata), in and out."""

from __future__ import annotations

from typing import Any

import yaml

from hubmerge.errors import HubmergeError


def split_front_matter(text: str, *, source: str = "README.md") -> tuple[dict[str, Any], str]:
    """(metadata, body) of a README; a README without front matter has empty metadata."""
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


def front_matter(meta: dict[str, Any]) -> str:
    """The metadata as a front-matter block, keys in their order, ending with its closing ``---`` line."""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def recorded_block(readme: str | None) -> dict[str, Any]:
    """The ``hubmerge:`` block of a README's front matter (recipe, content hash...); {} when there is none."""
    if not readme:
        return {}
    meta, _ = split_front_matter(readme)
    block = meta.get("hubmerge")
    return block if isinstance(block, dict) else {}
