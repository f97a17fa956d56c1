"""Recipes recorded in Hub repos' cards: the spec a repo's README holds, the recipe a hubmerge push recorded."""

from __future__ import annotations

from typing import Any

from hubmerge.errors import HubError
from hubmerge.hub.client import Hub
from hubmerge.spec.frontmatter import recorded_block, split_front_matter
from hubmerge.spec.model import MergeSpec
from hubmerge.spec.parse import spec_from_dict


def recorded_recipe(hub: Hub, target: str) -> tuple[str, dict[str, Any]]:
    head = hub.resolve(target)
    block = recorded_block(hub.readme(target, head))
    recipe = block.get("recipe")
    if not isinstance(recipe, dict):
        raise HubError(f"{target} has no hubmerge recipe in its card",
                       hint="only repos pushed by hubmerge can be checked; push it once with 'hubmerge push'")
    return head, recipe



def spec_from_repo(hub: Hub, repo_id: str, revision: str | None = None) -> MergeSpec:
    """A spec stored in a repo's README front matter under ``hubmerge: {recipe: ...}``."""
    sha = hub.resolve(repo_id, revision)
    readme = hub.read_small_file(repo_id, sha, "README.md")
    if readme is None:
        raise HubError(f"{repo_id} has no README.md holding a recipe",
                       hint="put the spec under 'hubmerge: {recipe: ...}' in the README front matter")
    meta, _ = split_front_matter(readme.decode("utf-8", errors="replace"), source=f"{repo_id}/README.md")
    block = meta.get("hubmerge")
    if not isinstance(block, dict) or not isinstance(block.get("recipe"), dict):
        raise HubError(f"{repo_id}/README.md has no 'hubmerge.recipe' in its front matter",
                       hint="add the merge spec under 'hubmerge: {recipe: ...}'")
    recipe = dict(block["recipe"])
    options = dict(recipe.get("hubmerge") or {})
    options.setdefault("target", repo_id)
    recipe["hubmerge"] = options
    return spec_from_dict(recipe, source=f"{repo_id}/README.md hubmerge.recipe")
