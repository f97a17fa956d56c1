"""The JSON Schema that ships with the package and drives structural validation of a spec."""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

import jsonschema

from hubmerge.errors import SpecError


@lru_cache(maxsize=1)
def spec_schema() -> dict[str, Any]:
    return json.loads(resources.files("hubmerge.spec").joinpath("schema.json").read_text(encoding="utf-8"))


def yaml_path(parts: Iterable[Any]) -> str:
    """``["models", 1, "parameters", "density"]`` -> ``models[1].parameters.density``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def validate_against_schema(document: Any, *, source: str = "spec", schema: dict[str, Any] | None = None) -> None:
    """Raise a SpecError for the most relevant schema violation, naming its YAML path (``schema``: another
    schema than the merge spec's, e.g. a tool recipe's)."""
    validator = jsonschema.Draft202012Validator(spec_schema() if schema is None else schema)
    errors = list(validator.iter_errors(document))
    if not errors:
        return
    # Unknown keys are the most common mistake and the most actionable: report them first.
    errors.sort(key=lambda e: (e.validator != "additionalProperties", len(e.absolute_path)))
    error = jsonschema.exceptions.best_match(errors) if errors[0].validator != "additionalProperties" else errors[0]
    raise _to_spec_error(error, source)


# Shorthands people write for the dtypes a spec takes (torch's names).
_DTYPE_SHORTHANDS = {"bf16": "bfloat16", "fp16": "float16", "f16": "float16", "half": "float16",
                     "fp32": "float32", "f32": "float32", "float": "float32", "single": "float32",
                     "fp64": "float64", "f64": "float64", "double": "float64"}


def _to_spec_error(error: jsonschema.ValidationError, source: str) -> SpecError:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = [k for k in error.instance if k not in allowed]
        key = unknown[0] if unknown else "?"
        suggestion = did_you_mean(key, allowed)
        hint = f"did you mean '{suggestion}'?" if suggestion else f"allowed keys here: {', '.join(sorted(allowed))}"
        return SpecError(f"unknown key '{key}'", path=yaml_path(path + [key]), hint=hint)
    if error.validator == "enum":
        options = ", ".join(repr(v) for v in error.validator_value if v is not None)
        suggestion = _DTYPE_SHORTHANDS.get(str(error.instance).strip().lower().removeprefix("torch.")) \
            if path and path[-1] in ("dtype", "out_dtype") else None
        if suggestion is not None:  # mergekit 0.1.5 refuses these too ('Unimplemented dtype'), once it merges
            hint = f"write '{suggestion}': dtype names are torch's, as mergekit reads them"
        else:
            suggestion = did_you_mean(str(error.instance), [str(v) for v in error.validator_value if v])
            hint = f"did you mean '{suggestion}'?" if suggestion else f"one of {options}"
        return SpecError(f"{error.instance!r} is not allowed", path=yaml_path(path), hint=hint)
    if error.validator == "required":
        return SpecError(error.message.replace("'", ""), path=yaml_path(path))
    if error.validator in ("anyOf", "oneOf"):
        return SpecError(f"{_short(error.instance)} has the wrong form", path=yaml_path(path),
                         hint=_form_hint(path))
    return SpecError(error.message, path=yaml_path(path))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _form_hint(path: list[Any]) -> str:
    last = next((p for p in reversed(path) if isinstance(p, str)), "")
    if last in ("model", "base_model", "lora"):
        return "a model is 'org/name', 'org/name@revision', a local path, or {path: ..., revision: ...}"
    if path and len(path) >= 2 and path[-2] == "parameters":
        return ("a parameter is a number/bool/string, a list (gradient), a list of {filter: ..., value: ...}, "
                "or, for hubmerge evolve, {search: [low, high]} with optional step or log: true, or {choice: [a, b, ...]}")
    return "see the spec reference in the README"
