"""The values every recipe kind shares, parsed from YAML: model references, dtypes, sizes, the tokenizer
source, our ``hubmerge:`` options. Used by merge specs (``parse``) and MoE recipes (``moe``) alike."""

from __future__ import annotations

import re
from typing import Any

from hubmerge.errors import SpecError
from hubmerge.spec.model import HubmergeOptions, ModelRef

_REF_RE = re.compile(r"^(?P<path>[^@+]+)(?:@(?P<rev>[^@+]+))?$")


def parse_ref(text: str, path: str = "model") -> ModelRef:
    """``org/name``, ``org/name@rev``, ``./local/dir``, ``model+lora``, ``model@rev+lora@rev``."""
    text = text.strip()
    model_part, _, lora_part = text.partition("+")
    model = _single_ref(model_part, text, path)
    if lora_part:
        return ModelRef(model.path, model.revision, _single_ref(lora_part, text, path))
    return model


def _single_ref(part: str, whole: str, path: str) -> ModelRef:
    match = _REF_RE.match(part.strip())
    if not match or not match.group("path").strip():
        raise SpecError(
            f"invalid model reference {whole!r}",
            path=path,
            hint="use 'org/name', 'org/name@revision' or a local folder path (one '@' at most)",
        )
    return ModelRef(match.group("path").strip(), match.group("rev"))


def ref_from_yaml(value: Any, path: str) -> ModelRef:
    """A schema-valid model reference: a string, ``{path, revision}`` or ``{model, lora}``."""
    if isinstance(value, str):
        return parse_ref(value, path)
    if "path" in value:  # {path, revision}
        return ModelRef(value["path"], value.get("revision"))
    model = ref_from_yaml(value["model"], f"{path}.model")
    lora = value.get("lora")
    if lora is not None:
        lora_ref = ref_from_yaml(lora, f"{path}.lora")
        return ModelRef(model.path, model.revision, lora_ref)
    return model


LEGACY_MODEL_PREFIX = "model:"


def without_legacy_prefix(value: Any) -> Any:
    """``model:org/name`` -> ``org/name``: how mergekit before 0.0.4 spelled a model as tokenizer source (0.1.5
    would look for a folder called ``model:org/name``). Other values are returned as they are."""
    if isinstance(value, str) and value.strip().startswith(LEGACY_MODEL_PREFIX):
        return value.strip()[len(LEGACY_MODEL_PREFIX):].strip()
    return value


def tokenizer_source_of(value: Any, path: str) -> str | ModelRef:
    value = without_legacy_prefix(value)
    if value in ("base", "union"):
        return value
    if value == "":
        raise SpecError("'model:' names no model", path=path, hint="write 'model:org/name', or just 'org/name'")
    return ref_from_yaml(value, path)


def dtype_name(value: str | None) -> str | None:
    if value is None:
        return None
    return value[len("torch."):] if value.startswith("torch.") else value


_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)


def parse_size(value: int | str, path: str = "max_shard_size") -> int:
    """Bytes from ``5000000000``, ``'5GB'``, ``'500M'``, ``'2GiB'`` (decimal unless ``i``)."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(value)
    if not match:
        raise SpecError(f"invalid size {value!r}", path=path, hint="use bytes or a suffix: 500MB, 5GB, 2GiB")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    base = 1024 if binary else 1000
    factor = {"": 1, "K": base, "M": base**2, "G": base**3, "T": base**4}[unit]
    size = int(number * factor)
    if size < 1:
        raise SpecError(f"size {value!r} must be at least one byte", path=path)
    return size


def format_size(n: float) -> str:
    """Bytes for people: ``512 B``, ``1.50 MB``, ``2.00 TB`` (decimal units, as ``parse_size`` reads them)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def hubmerge_options(doc: dict[str, Any]) -> HubmergeOptions:
    known = {"target", "private", "seed", "max_shard_size", "license", "create_pr", "track"}
    return HubmergeOptions(
        target=doc.get("target"),
        private=bool(doc.get("private", False)),
        seed=int(doc.get("seed", 0)),
        max_shard_size=parse_size(doc["max_shard_size"], "hubmerge.max_shard_size")
        if doc.get("max_shard_size") is not None
        else None,
        license=doc.get("license"),
        create_pr=bool(doc.get("create_pr", False)),
        track=dict(doc.get("track") or {}),
        extra={k: v for k, v in doc.items() if k not in known},
    )
