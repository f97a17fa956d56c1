"""Typed dataclasses for a merge spec (mergekit's grammar plus our ``hubmerge:`` options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Scalar = Union[bool, int, float, str]


@dataclass(frozen=True)
class Conditional:
    """``{filter: <substring of the tensor name>, value: <scalar|gradient>}``; no filter or ``*`` matches all."""

    value: Scalar | tuple[Scalar, ...]
    filter: str | None = None


@dataclass(frozen=True)
class SearchRange:
    """``{search: [low, high], step: ..., log: ...}``: a numeric value left for ``hubmerge evolve`` to find.

    It may stand wherever a numeric scalar does (a setting, a gradient entry, a conditional's value); a spec
    that still holds one cannot be merged until the search has replaced it with a number.
    """

    low: float
    high: float
    step: float | None = None
    log: bool = False


@dataclass(frozen=True)
class SearchChoice:
    """``{choice: [a, b, ...]}``: a value ``hubmerge evolve`` picks among the listed scalars (a categorical
    search dimension). It may stand wherever a scalar does, and as ``merge_method`` itself."""

    options: tuple[Scalar, ...]


# A parameter setting: a scalar, a gradient (tuple of scalars), or a tuple of conditionals. Any scalar may be
# a SearchRange (numbers) or a SearchChoice in a spec meant for ``hubmerge evolve``.
Setting = Union[Scalar, SearchRange, SearchChoice, tuple[Scalar, ...], tuple[Conditional, ...]]
Parameters = dict[str, Setting]


@dataclass(frozen=True)
class ModelRef:
    """A model reference: a Hub repo id or a local path, an optional revision, an optional LoRA adapter."""

    path: str
    revision: str | None = None
    lora: ModelRef | None = None

    def __str__(self) -> str:
        text = self.path + (f"@{self.revision}" if self.revision else "")
        if self.lora is not None:
            text += f"+{self.lora}"
        return text

    @property
    def without_revision(self) -> ModelRef:
        return ModelRef(self.path, None, self.lora)


@dataclass(frozen=True)
class InputModel:
    model: ModelRef
    parameters: Parameters = field(default_factory=dict)
    yaml_path: str = ""
    # ``layer_range`` under ``models:`` (published recipes write it); mergekit ignores it and merges the whole
    # model, so the planner accepts only a range that spans the whole model.
    layer_range: tuple[int, int] | None = None


@dataclass(frozen=True)
class SliceSource:
    model: ModelRef
    layer_range: tuple[int, int]
    parameters: Parameters = field(default_factory=dict)
    yaml_path: str = ""


@dataclass(frozen=True)
class OutputSlice:
    sources: tuple[SliceSource, ...]
    base_model: ModelRef | None = None
    parameters: Parameters = field(default_factory=dict)
    yaml_path: str = ""


@dataclass(frozen=True)
class ModuleSpec:
    """``modules.<name>``: the models or slices of one module (text decoder, vision tower, ...) of the model."""

    name: str
    models: tuple[InputModel, ...] = ()
    slices: tuple[OutputSlice, ...] = ()
    parameters: Parameters = field(default_factory=dict)  # between slice and top-level parameters
    yaml_path: str = ""


@dataclass(frozen=True)
class TokenizerSpec:
    source: str | ModelRef | None = None  # "base", "union" or a model
    tokens: dict[str, Any] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None


@dataclass(frozen=True)
class HubmergeOptions:
    """Our own keys, all under one ``hubmerge:`` mapping so the rest stays mergekit-compatible."""

    target: str | None = None  # Hub repo id the result is pushed to
    private: bool = False
    seed: int = 0  # seeds random methods per output tensor
    max_shard_size: int | None = None  # bytes
    license: str | None = None
    create_pr: bool = False
    track: dict[str, str] = field(default_factory=dict)  # model -> branch tracked for re-merge
    extra: dict[str, Any] = field(default_factory=dict)  # recorded, non-recipe keys (pinned SHAs, hashes)


@dataclass(frozen=True)
class MergeSpec:
    merge_method: str
    base_model: ModelRef | None = None
    models: tuple[InputModel, ...] = ()
    slices: tuple[OutputSlice, ...] = ()
    parameters: Parameters = field(default_factory=dict)
    # ``modules:`` (instead of top-level models/slices): per module, in spec order.
    modules: tuple[ModuleSpec, ...] = ()
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = None
    name: str | None = None  # mergekit-multi stage name
    hubmerge: HubmergeOptions = field(default_factory=HubmergeOptions)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def referenced_models(self) -> list[ModelRef]:
        """Every model the recipe names, de-duplicated, in a stable order: base first, then spec order."""
        seen: dict[ModelRef, None] = {}
        if self.base_model is not None:
            seen[self.base_model] = None
        for models, slices in [(self.models, self.slices)] + [(m.models, m.slices) for m in self.modules]:
            for m in models:
                seen.setdefault(m.model, None)
            for s in slices:
                if s.base_model is not None:
                    seen.setdefault(s.base_model, None)
                for src in s.sources:
                    seen.setdefault(src.model, None)
        return list(seen)

    def tokenizer_donor(self) -> ModelRef | None:
        """The model named as tokenizer source when it is not one of the inputs (mergekit takes its tokenizer
        as it is and re-indexes the inputs' embeddings onto it); None otherwise."""
        source = self.tokenizer.source if self.tokenizer is not None else None
        if isinstance(source, ModelRef) and source not in self.referenced_models():
            return source
        return None

    def input_groups(self) -> list[tuple[str, tuple[InputModel, ...], tuple[OutputSlice, ...], Parameters]]:
        """(yaml path prefix, models, slices, module parameters) for the top level or each module."""
        if self.modules:
            return [(m.yaml_path, m.models, m.slices, m.parameters) for m in self.modules]
        return [("", self.models, self.slices, {})]
