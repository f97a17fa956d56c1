"""Spec text -> typed MergeSpec. Structure is checked by the JSON Schema, meaning by ``validate``."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from hubmerge.errors import SpecError
from hubmerge.spec.fields import dtype_name as _dtype
from hubmerge.spec.fields import format_size, parse_ref, parse_size  # noqa: F401 (the package's names for them)
from hubmerge.spec.fields import hubmerge_options as _options
from hubmerge.spec.fields import ref_from_yaml as _ref
from hubmerge.spec.fields import tokenizer_source_of as _tokenizer_source
from hubmerge.spec.model import (
    Conditional,
    InputModel,
    MergeSpec,
    ModuleSpec,
    OutputSlice,
    Parameters,
    SearchChoice,
    SearchRange,
    Setting,
    SliceSource,
    TokenizerSpec,
)
from hubmerge.spec.moe import MoESpec, is_moe_document, parse_moe
from hubmerge.spec.schema import validate_against_schema
from hubmerge.spec.search import _is_search, midpoint, spec_search_ranges, substitute
from hubmerge.spec.tools import (
    DEFAULT_K,
    DEFAULT_RANK,
    EXTRACT_LORA,
    TOOLS,
    ExtractLoraSpec,
    TokensurgeonSpec,
    ToolSpec,
    tool_of,
    tool_schema,
)
from hubmerge.spec.validate import check_spec
from hubmerge.spec.yamlio import MAX_SPEC_BYTES, load_yaml_documents

logger = logging.getLogger(__name__)


def read_spec_text(path: str | Path) -> str:
    """A spec file's text. At most ``MAX_SPEC_BYTES`` + 1 bytes are read (``/dev/zero`` is refused at once);
    an oversized text is returned cut, for ``load_yaml_documents`` to refuse naming the limit (or the field
    that makes it so large)."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec file not found: {path}")
    if path.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        return raw.decode("utf-8", errors="strict" if len(raw) <= MAX_SPEC_BYTES else "ignore")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def load_spec(path: str | Path) -> MergeSpec:
    """Read a single-stage spec file."""
    return parse_spec(read_spec_text(path), source=str(path))


def parse_spec(text: str, *, source: str = "spec") -> MergeSpec:
    docs = load_yaml_documents(text, source=source)
    if not docs:
        raise SpecError(f"{source}: the spec is empty", hint="start with 'merge_method: ...'")
    if len(docs) > 1:
        raise SpecError(
            f"{source}: holds {len(docs)} YAML documents; a single merge needs exactly one",
            hint="multi-stage specs (named stages, as mergekit-multi) run with 'hubmerge merge' and 'hubmerge validate'",
        )
    return spec_from_dict(docs[0], source=source)


def refuse_non_finite(document: Any, *, source: str) -> None:
    """No number in a recipe may be NaN or infinite (weights, t, density, gradients, search ranges...)."""
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{value} is not a finite number", path=path or "<root>", source=source,
                            hint="parameters must be finite numbers")
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))


def spec_from_dict(document: Any, *, source: str = "spec") -> MergeSpec | MoESpec:
    """A merge spec, or a mergekit-moe recipe (``experts:`` and no ``merge_method``: ``hubmerge.spec.moe``), or
    (for a document with an ``extract_lora:`` or ``tokensurgeon:`` key) a tool recipe (``hubmerge.spec.tools``),
    so every command that reads recipes from files and cards takes them all."""
    if not isinstance(document, dict):
        raise SpecError(f"the spec must be a mapping of keys, got {type(document).__name__}", source=source)
    refuse_non_finite(document, source=source)
    if tool_of(document) is not None:
        return tool_spec_from_dict(document, source=source)  # type: ignore[return-value]
    if "out_path" in document:  # mergekit-mega's stage key; the output folder comes from the command line
        if not isinstance(document["out_path"], str) or not document["out_path"].strip():
            raise SpecError("out_path must name a folder", path="out_path", source=source,
                            hint="e.g. 'out_path: ./models/step-one' (it only names the stage; -o names the output)")
        logger.debug("%s: out_path %r names the stage; the output goes where the command says", source,
                     document["out_path"])
        document = {k: v for k, v in document.items() if k != "out_path"}
    if is_moe_document(document):  # a mergekit-moe recipe: experts instead of a merge method
        return parse_moe(document, source=source)
    validate_against_schema(document, source=source)
    method = document["merge_method"]
    if isinstance(method, dict):  # {choice: [...]} for hubmerge evolve: the spec must suit every method listed
        return _method_choice(document, method, source)
    spec = _build(document)
    check_spec(spec)
    return spec


def _method_choice(document: dict[str, Any], node: dict[str, Any], source: str) -> MergeSpec:
    from hubmerge.spec.search import find_search_ranges

    options = find_search_ranges({"merge_method": node})[0].range.options  # type: ignore[union-attr]
    specs = []
    for option in options:
        if not isinstance(option, str) or not option.strip():
            raise SpecError(f"a merge method must be a name, got {option!r}", path="merge_method.choice",
                            source=source)
        try:
            spec = _build({**document, "merge_method": option})
            check_spec(spec)
        except SpecError as exc:
            text = exc.message.removeprefix(f"{exc.path}: ") if exc.path else exc.message
            raise SpecError(f"{text} (with merge_method {option}, one of the choices)", path=exc.path,
                            hint=exc.hint, source=source) from None
        specs.append(spec)
    return replace(specs[0], raw=document)


# ---------------------------------------------------------------------------------------------
# Building dataclasses from a schema-valid document


def _build(doc: dict[str, Any]) -> MergeSpec:
    models_doc = doc.get("models")
    slices_doc = doc.get("slices")
    if "modules" in doc and (models_doc or slices_doc):
        key = "models" if models_doc else "slices"
        raise SpecError(f"'modules' and top-level '{key}' cannot be mixed", path=key,
                        hint="move the models or slices into the module they are for (modules.<name>.models)")
    if "modules" not in doc and bool(models_doc) == bool(slices_doc):
        raise SpecError(
            "exactly one of 'models', 'slices' or 'modules' must be given",
            path="<root>",
            hint="'models' merges whole models; 'slices' picks layer ranges; 'modules' does either per module",
        )

    base = _ref(doc.get("base_model"), "base_model") if doc.get("base_model") is not None else None
    models = _models(models_doc, "models")
    slices = tuple(_slice(s, f"slices[{i}]") for i, s in enumerate(slices_doc or ()))
    modules = tuple(_module(name, m, f"modules.{name}") for name, m in (doc.get("modules") or {}).items())

    parameters = _params(doc.get("parameters"))

    if doc.get("tokenizer") is not None and doc.get("tokenizer_source") is not None:
        raise SpecError("give either 'tokenizer' or 'tokenizer_source', not both", path="tokenizer_source")
    tokenizer = None
    if doc.get("tokenizer_source") is not None:
        tokenizer = TokenizerSpec(source=_tokenizer_source(doc["tokenizer_source"], "tokenizer_source"))
    elif doc.get("tokenizer") is not None:
        tk = doc["tokenizer"]
        tokenizer = TokenizerSpec(
            source=_tokenizer_source(tk.get("source", "union"), "tokenizer.source"),
            tokens=dict(tk.get("tokens") or {}),
            pad_to_multiple_of=tk.get("pad_to_multiple_of"),
        )

    return MergeSpec(
        merge_method=doc["merge_method"].strip(),
        base_model=base,
        models=models,
        slices=slices,
        parameters=parameters,
        modules=modules,
        dtype=_dtype(doc.get("dtype")),
        out_dtype=_dtype(doc.get("out_dtype")),
        tokenizer=tokenizer,
        chat_template=doc.get("chat_template"),
        name=doc.get("name"),
        hubmerge=_options(doc.get("hubmerge") or {}),
        raw=doc,
    )


def _models(docs: list[dict[str, Any]] | None, path: str) -> tuple[InputModel, ...]:
    return tuple(InputModel(_ref(m["model"], f"{path}[{i}].model"), _params(m.get("parameters")), f"{path}[{i}]",
                            tuple(m["layer_range"]) if m.get("layer_range") is not None else None)
                 for i, m in enumerate(docs or ()))


def _module(name: str, doc: dict[str, Any], path: str) -> ModuleSpec:
    """``modules.<name>``: exactly one of models / slices, as for the whole model (mergekit's grammar)."""
    if bool(doc.get("models")) == bool(doc.get("slices")):
        raise SpecError(f"module '{name}' needs exactly one of 'models' or 'slices'", path=path,
                        hint="'models' merges the module's whole stack; 'slices' picks its layer ranges")
    slices = tuple(_slice(s, f"{path}.slices[{i}]") for i, s in enumerate(doc.get("slices") or ()))
    return ModuleSpec(name, _models(doc.get("models"), f"{path}.models"), slices, _params(doc.get("parameters")),
                      path)


def _slice(doc: dict[str, Any], path: str) -> OutputSlice:
    sources = []
    for j, src in enumerate(doc["sources"]):
        start, end = src["layer_range"]
        if end <= start:
            raise SpecError(
                f"layer_range [{start}, {end}] is empty",
                path=f"{path}.sources[{j}].layer_range",
                hint="layer_range is [first, last+1), like a Python range",
            )
        sources.append(SliceSource(_ref(src["model"], f"{path}.sources[{j}].model"), (start, end),
                                   _params(src.get("parameters")), f"{path}.sources[{j}]"))
    lengths = {s.layer_range[1] - s.layer_range[0] for s in sources}
    if len(lengths) > 1:
        raise SpecError(
            "all sources of a slice must span the same number of layers, got "
            + ", ".join(f"{s.model}: {s.layer_range[1] - s.layer_range[0]}" for s in sources),
            path=f"{path}.sources",
        )
    base = _ref(doc["base_model"], f"{path}.base_model") if doc.get("base_model") is not None else None
    return OutputSlice(tuple(sources), base, _params(doc.get("parameters")), path)


def _params(doc: dict[str, Any] | None) -> Parameters:
    if not doc:
        return {}
    return {name: _setting(value) for name, value in doc.items()}


def _setting(value: Any) -> Setting:
    if isinstance(value, dict) and not _is_search(value):
        return (Conditional(_scalar_or_gradient(value["value"]), value.get("filter")),)
    if isinstance(value, list):
        if all(isinstance(v, dict) and not _is_search(v) for v in value):
            return tuple(Conditional(_scalar_or_gradient(v["value"]), v.get("filter")) for v in value)
        return tuple(_value(v) for v in value)
    return _value(value)


def _scalar_or_gradient(value: Any) -> Any:
    return tuple(_value(v) for v in value) if isinstance(value, list) else _value(value)


def _value(value: Any) -> Any:
    """A scalar, a search range (``{search: [low, high], ...}``) or a choice (``{choice: [...]}``), the last
    two left for ``hubmerge evolve``."""
    if isinstance(value, dict) and "choice" in value:
        return SearchChoice(tuple(value["choice"]))
    if isinstance(value, dict):
        low, high = value["search"]
        return SearchRange(float(low), float(high), value.get("step"), bool(value.get("log", False)))
    return value


def at_midpoints(spec: MergeSpec) -> MergeSpec | None:
    """The spec with every search range at its midpoint, or None when it has none (for validation:
    shapes and parameter ranges are checked as for any candidate of the search)."""
    found = spec_search_ranges(spec)
    if not found:
        return None
    return spec_from_dict(substitute(spec.raw, {p.path: midpoint(p.range) for p in found}), source="search midpoints")


# ---------------------------------------------------------------------------------------------
# Tool recipes (extract_lora, tokensurgeon)


def tool_spec_from_dict(document: dict[str, Any], *, source: str = "recipe") -> ToolSpec:
    """An ``extract_lora`` / ``tokensurgeon`` recipe (see ``hubmerge.spec.tools``) as its dataclass."""
    tool = tool_of(document)
    if tool is None:
        raise SpecError("not a tool recipe", source=source, hint=f"give one of {', '.join(TOOLS)}")
    others = [k for k in document if k in TOOLS or k == "merge_method"]
    if len(others) > 1:
        raise SpecError(f"names both {others[0]} and {others[1]}, but a recipe is one job", source=source,
                        path=others[1],
                        hint="put each job in its own file")
    validate_against_schema(document, source=source, schema=tool_schema(tool))
    body = document[tool]
    options = _options(document.get("hubmerge") or {})
    if tool == EXTRACT_LORA:
        for key in ("include", "exclude"):
            for i, pattern in enumerate(body.get(key) or ()):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise SpecError(f"{pattern!r} is not a valid regular expression ({exc})",
                                    path=f"{tool}.{key}[{i}]") from None
        return ExtractLoraSpec(
            model=_ref(body["model"], f"{tool}.model"), base_model=_ref(body["base_model"], f"{tool}.base_model"),
            rank=int(body.get("rank", DEFAULT_RANK)), sv_epsilon=float(body.get("sv_epsilon", 0.0)),
            embed_lora=bool(body.get("embed_lora", False)), save_modules=tuple(body.get("save_modules") or ()),
            include=tuple(body.get("include") or ()), exclude=tuple(body.get("exclude") or ()),
            distribute_scale=bool(body.get("distribute_scale", True)), dtype=_dtype(body.get("dtype")),
            hubmerge=options, raw=document)
    return TokensurgeonSpec(
        model=_ref(body["model"], f"{tool}.model"), donor=_ref(body["donor"], f"{tool}.donor"),
        method=body.get("method", "omp"), k=int(body.get("k", DEFAULT_K)),
        subword_method=body.get("subword_method", "mean"), hubmerge=options, raw=document)
