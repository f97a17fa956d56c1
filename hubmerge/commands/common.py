"""What the commands share: the Hub client of a command line, its spec (or the Hub repo holding one), sizes."""

from __future__ import annotations

from pathlib import Path

from hubmerge.errors import SpecError
from hubmerge.hub import Hub
from hubmerge.hub.recipes import spec_from_repo
from hubmerge.spec import load_spec, parse_size
from hubmerge.spec.moe import is_moe_spec


def shard_size(args) -> int | None:
    return parse_size(args.max_shard_size, "--max-shard-size") if getattr(args, "max_shard_size", None) else None


def hub_of(args) -> Hub:
    return Hub(endpoint=getattr(args, "endpoint", None), download=getattr(args, "download", False))


def spec_or_repo(args, hub=None):
    """A spec file, or (for push) a Hub repo id whose README front matter holds the recipe."""
    path = Path(args.spec)
    if path.exists() or hub is None or "/" not in args.spec or args.spec.endswith((".yml", ".yaml")):
        return load_spec(path), path.resolve().parent
    return spec_from_repo(hub, args.spec), None


def merge_only(spec, what: str) -> None:
    """Refuse an extract_lora / tokensurgeon or MoE recipe where only merge specs make sense (parts, evolve...)."""
    from hubmerge.spec.tools import is_tool_spec

    if is_moe_spec(spec):
        raise SpecError(f"{what} works on merge specs, not on MoE recipes",
                        hint="run the recipe with 'hubmerge moe' or 'hubmerge push' (in one piece)")
    if is_tool_spec(spec):
        command = spec.tool.replace("_", "-")
        raise SpecError(f"{what} works on merge specs, not on {spec.tool} recipes",
                        hint=f"run the recipe with 'hubmerge merge', 'hubmerge push' or 'hubmerge {command}'")
