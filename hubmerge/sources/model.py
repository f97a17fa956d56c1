"""An input model as the planner sees it: its config, its tensor headers, a reader for the data."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from hubmerge.errors import SourceError
from hubmerge.sources.readers import LocalFileReader, TensorReader
from hubmerge.sources.safetensors_format import TensorInfo, header_length, parse_header
from hubmerge.spec.model import ModelRef

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_JSON_BYTES = 50 * 1024 * 1024  # config.json / index files larger than this are refused


@dataclass
class ModelSource:
    """A resolved input model. ``revision`` is the pinned commit SHA for Hub models (None for local)."""

    ref: ModelRef
    name: str  # how it is shown and recorded: Hub id or local path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    reader: TensorReader
    read_file: Callable[[str], bytes | None]  # small side files (tokenizer, generation config)
    list_files: Callable[[], list[str]]
    revision: str | None = None
    is_hub: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.reader.close()


def check_relative_file(name: str, *, context: str) -> str:
    """A file name from an index or listing must stay inside the model folder."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise SourceError(f"{context}: invalid file name {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("..", "") for part in pure.parts) or name.startswith("~"):
        raise SourceError(f"{context}: file '{name}' points outside the model folder",
                          hint="the index is corrupt or crafted; refusing to follow it")
    return name


def parse_json_file(raw: bytes, *, context: str) -> Any:
    if len(raw) > MAX_JSON_BYTES:
        raise SourceError(f"{context}: larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{context}: not valid JSON ({exc})") from None


def weight_files_from_index(index: Any, *, context: str) -> dict[str, str]:
    """tensor name -> file, from a ``model.safetensors.index.json`` document."""
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise SourceError(f"{context}: missing 'weight_map'")
    out = {}
    for tensor, file in index["weight_map"].items():
        out[tensor] = check_relative_file(file, context=context)
    return out


def collect_tensors(headers: dict[str, dict[str, TensorInfo]], weight_map: dict[str, str] | None,
                    *, model: str) -> dict[str, TensorInfo]:
    """Merge per-file headers into one tensor table, checking it agrees with the index if there is one."""
    tensors: dict[str, TensorInfo] = {}
    for file, infos in headers.items():
        for name, info in infos.items():
            if name in tensors:
                raise SourceError(f"{model}: tensor '{name}' appears in both {tensors[name].file} and {file}")
            tensors[name] = info
    if weight_map is not None:
        for name, file in weight_map.items():
            info = tensors.get(name)
            if info is None or info.file != file:
                raise SourceError(f"{model}: the index says tensor '{name}' is in {file}, but it is not there",
                                  hint="the index and the shards disagree; the download may be incomplete")
    return tensors


def refuse_pickle(files: list[str], model: str) -> None:
    pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    if pickles:
        raise SourceError(
            f"{model} has only pickle checkpoints ({', '.join(sorted(pickles)[:3])}), which can run arbitrary code",
            hint="convert the model to safetensors first (for example with transformers' save_pretrained)",
        )
    raise SourceError(f"{model}: no .safetensors weights found")


def open_local_model(ref: ModelRef, root: Path) -> ModelSource:
    name = ref.path
    if not root.is_dir():
        raise SourceError(f"model folder not found: {root}")
    files = sorted(str(p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file())
    config_path = root / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{name}: no config.json in {root}", hint="a model folder needs its config.json")
    config = parse_json_file(config_path.read_bytes(), context=f"{name}/config.json")
    if not isinstance(config, dict):
        raise SourceError(f"{name}/config.json must be a JSON object")

    weight_map = None
    if (root / INDEX_FILE).is_file():
        index = parse_json_file((root / INDEX_FILE).read_bytes(), context=f"{name}/{INDEX_FILE}")
        weight_map = weight_files_from_index(index, context=f"{name}/{INDEX_FILE}")
        weight_files = sorted(set(weight_map.values()))
    elif (root / SINGLE_FILE).is_file():
        weight_files = [SINGLE_FILE]
    else:
        weight_files = [f for f in files if f.endswith(".safetensors") and "/" not in f]
        if not weight_files:
            refuse_pickle(files, name)

    reader = LocalFileReader(root)
    headers = {}
    for file in weight_files:
        path = root / file
        if not path.is_file():
            raise SourceError(f"{name}: weight file {file} is missing", hint="the download may be incomplete")
        size = path.stat().st_size
        n = header_length(reader.read_prefix(file, 8), file=f"{name}/{file}", file_size=size)
        raw = reader.read_prefix(file, n, 8)
        headers[file] = parse_header(raw, file=file, file_size=size, display=f"{name}/{file}").tensors

    def read_file(rel: str) -> bytes | None:
        path = root / check_relative_file(rel, context=name)
        return path.read_bytes() if path.is_file() else None

    return ModelSource(
        ref=ref,
        name=name,
        config=config,
        tensors=collect_tensors(headers, weight_map, model=name),
        reader=reader,
        read_file=read_file,
        list_files=lambda: files,
    )


def open_model(ref: ModelRef, *, base_dir: Path | None = None, hub: Any = None) -> ModelSource:
    """Open a model reference: a local folder if one exists at the path, else a Hub repo (via ``hub``)."""
    if ref.lora is not None:
        raise SourceError(f"{ref}: LoRA adapter inputs are not supported yet", hint="merge the adapter first")
    local = Path(ref.path).expanduser()
    if not local.is_absolute() and base_dir is not None and (base_dir / local).exists():
        local = base_dir / local
    if local.exists():
        if ref.revision:
            raise SourceError(f"{ref}: a revision ('@{ref.revision}') only applies to Hub models, "
                              f"but {ref.path} is a local folder")
        return open_local_model(ref, local)
    if hub is not None and _looks_like_repo_id(ref.path):
        from hubmerge.errors import HubError

        try:
            return hub.open_model(ref)
        except HubError as exc:
            # Say both halves: people mistype local paths far more often than repo ids.
            raise HubError(f"model not found: {ref}: no local folder at {local}, and on the Hub: {exc.message}",
                           hint=exc.hint) from None
    hint = "check the path" if not _looks_like_repo_id(ref.path) else "Hub models need network access"
    raise SourceError(f"model not found: {ref} (no local folder at {local})", hint=hint)


def _looks_like_repo_id(path: str) -> bool:
    parts = path.split("/")
    return (1 <= len(parts) <= 2 and all(parts) and not path.startswith((".", "~"))
            and all(c.isalnum() or c in "-_." for part in parts for c in part))
