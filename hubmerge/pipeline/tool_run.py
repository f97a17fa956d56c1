"""What the tool jobs (extract-lora, tokensurgeon) share: their run options, and opening their two inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from hubmerge.sources.model import ModelSource
from hubmerge.sources.open import open_model
from hubmerge.spec.model import ModelRef

Plan = TypeVar("Plan")


@dataclass
class ToolRun:
    """How to run a tool job: the options every command shares, and what the card should say."""

    device: str = "cpu"
    overwrite: bool = False
    base_dir: Path | None = None  # relative model paths are looked up here first
    show_progress: bool = True
    allow_pickle: bool = False
    max_shard_size: int | None = None  # tokensurgeon's output shards (an adapter is one file)
    on_shard: Callable[[Path], None] | None = None  # called with each finished weight file (push uploads it)
    title: str | None = None  # card title (default: the folder name)
    repo_id: str | None = None  # the Hub repo the card names
    existing_card: str | None = None  # a README whose prose and metadata the card keeps
    protected: tuple[Path, ...] = ()  # the output may not be, hold or lie inside these (the recipe file)


def open_two(first: ModelRef, second: ModelRef, plan: Callable[[ModelSource, ModelSource], Plan], *,
             base_dir: Path | None = None, hub: Any = None, allow_pickle: bool = False) -> Plan:
    """Open both inputs and plan; whatever fails, nothing stays open."""
    a = open_model(first, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
    try:
        b = open_model(second, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
    except BaseException:
        a.close()
        raise
    try:
        return plan(a, b)
    except BaseException:
        a.close()
        b.close()
        raise
