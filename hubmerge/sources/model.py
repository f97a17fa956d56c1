"""An input model as the planner sees it: its config, its tensor headers, a reader for the data."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable

from hubmerge.errors import HubError, SourceError
from hubmerge.sources.pickle_reader import PICKLE_SUFFIXES, PickleReader, pickle_headers, refuse_pickle_files
from hubmerge.sources.readers import LocalFileReader, NoTensors, TensorReader
from hubmerge.sources.safetensors_format import TensorInfo, header_length, parse_header
from hubmerge.spec.bounded import load_json
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
    """A small JSON file of a model (config, index, adapter config), bounded (``hubmerge.spec.bounded``)."""
    return load_json(raw, source=context, max_bytes=MAX_JSON_BYTES)


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


@dataclass(frozen=True)
class WeightFiles:
    """Which files hold a model's weights: safetensors (preferred) or, allowed explicitly, pickles."""

    files: list[str]
    weight_map: dict[str, str] | None  # tensor -> file, from an index
    pickle: bool = False


def find_weight_files(files: list[str], read_json: Callable[[str], Any], model: str, *,
                      allow_pickle: bool = False, prefix: str = "model") -> WeightFiles:
    """Pick the weight files from a folder listing. ``read_json(name)`` parses a small JSON file of it.

    ``prefix`` is ``model`` for models and ``adapter_model`` for PEFT adapters. Safetensors always win;
    pickles (``pytorch_model*.bin``, ``adapter_model.bin``) are used only with ``allow_pickle``."""
    listing = set(files)
    index, single = f"{prefix}.safetensors.index.json", f"{prefix}.safetensors"
    if index in listing:
        weight_map = weight_files_from_index(read_json(index), context=f"{model}/{index}")
        return WeightFiles(sorted(set(weight_map.values())), weight_map)
    if single in listing:
        return WeightFiles([single], None)
    top_level = [f for f in sorted(listing) if "/" not in f]
    safetensors = [f for f in top_level if f.endswith(".safetensors")]
    if safetensors:
        return WeightFiles(safetensors, None)
    pickle_prefix = "pytorch_model" if prefix == "model" else prefix
    pickle_index, pickle_single = f"{pickle_prefix}.bin.index.json", f"{pickle_prefix}.bin"
    if pickle_index in listing:
        weight_map = weight_files_from_index(read_json(pickle_index), context=f"{model}/{pickle_index}")
        found = WeightFiles(sorted(set(weight_map.values())), weight_map, pickle=True)
    elif pickle_single in listing:
        found = WeightFiles([pickle_single], None, pickle=True)
    else:
        shards = [f for f in top_level if f.startswith(pickle_prefix) and f.endswith(".bin")]
        found = WeightFiles(shards, None, pickle=True)
    if not found.files:
        refuse_pickle(list(listing), model)
    if not allow_pickle:
        raise refuse_pickle_files(found.files, model)
    return found


def refuse_pickle(files: list[str], model: str) -> None:
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise refuse_pickle_files(pickles, model)
    raise SourceError(f"{model}: no .safetensors weights found")


def local_weights(root: Path, weights: WeightFiles, name: str) -> tuple[dict[str, TensorInfo], TensorReader]:
    """Tensor table and reader for the weight files of a local folder."""
    headers = {}
    for file in weights.files:
        path = root / check_relative_file(file, context=name)
        if not path.is_file():
            raise SourceError(f"{name}: weight file {file} is missing", hint="the download may be incomplete")
    if weights.pickle:
        for file in weights.files:
            headers[file] = pickle_headers(root / file, file, f"{name}/{file}")
        reader: TensorReader = PickleReader({f: root / f for f in weights.files}, name, root=root)
    else:
        local = LocalFileReader(root)
        for file in weights.files:
            size = (root / file).stat().st_size
            n = header_length(local.read_prefix(file, 8), file=f"{name}/{file}", file_size=size)
            raw = local.read_prefix(file, n, 8)
            headers[file] = parse_header(raw, file=file, file_size=size, display=f"{name}/{file}").tensors
        reader = local
    return collect_tensors(headers, weights.weight_map, model=name), reader


def open_local_model(ref: ModelRef, root: Path, *, allow_pickle: bool = False,
                     files_only: bool = False) -> ModelSource:
    """``files_only``: the folder's side files (a tokenizer donor), no weights and config.json optional."""
    name = ref.path
    if not root.is_dir():
        raise SourceError(f"model folder not found: {root}")
    config_path = root / "config.json"
    if not config_path.is_file() and not files_only:
        raise SourceError(f"{name}: no config.json in {root}", hint="a model folder needs its config.json")
    # A model folder is looked at, not searched: its top level only (an index names any file below it).
    try:
        files = sorted(e.name for e in os.scandir(root) if e.is_file())
    except OSError as exc:
        raise SourceError(f"{name}: cannot list {root} ({exc.strerror})") from None
    config = parse_json_file(config_path.read_bytes(), context=f"{name}/config.json") if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise SourceError(f"{name}/config.json must be a JSON object")

    if files_only:
        tensors, reader = {}, NoTensors()
    else:
        weights = find_weight_files(files, lambda f: parse_json_file((root / f).read_bytes(), context=f"{name}/{f}"),
                                    name, allow_pickle=allow_pickle)
        tensors, reader = local_weights(root, weights, name)

    def read_file(rel: str) -> bytes | None:
        path = root / check_relative_file(rel, context=name)
        return path.read_bytes() if path.is_file() else None

    return ModelSource(
        ref=ref,
        name=name,
        config=config,
        tensors=tensors,
        reader=reader,
        read_file=read_file,
        list_files=lambda: files,
        extra={"local_root": root.resolve()},  # an output may not overlap it (output.folder.check_target)
    )


def _windows_path(path: str) -> PureWindowsPath | None:
    """A path written on Windows (``C:\\models\\x``, ``models\\x``), as published configs often hold."""
    if os.name == "nt" or not ("\\" in path or re.match(r"^[A-Za-z]:[\\/]", path)):
        return None
    return PureWindowsPath(path)


def local_folder(ref: ModelRef, base_dir: Path | None = None) -> Path | None:
    """The local folder a reference names, or None when it is not one (then it may be a Hub repo).

    A Windows path read on another system is mapped to a local folder: a relative one by its parts, an
    absolute one (``C:\\Users\\me\\models\\Mistral-7B``) by its last part, next to the spec or in the
    working directory, so configs copied from a Windows machine run unchanged."""
    windows = _windows_path(ref.path)
    if windows is None:
        local = Path(ref.path).expanduser()
        candidates = [base_dir / local] if not local.is_absolute() and base_dir is not None else []
        candidates.append(local)
    else:
        relative = Path(windows.name) if windows.anchor else Path(*windows.parts)
        candidates = ([base_dir / relative] if base_dir is not None else []) + [relative]
    local = next((c for c in candidates if c.exists()), None)
    if local is None:
        return None
    if windows is not None:
        logger.info("Windows path %s mapped to the local folder %s", ref.path, local)
    if ref.revision:
        raise SourceError(f"{ref}: a revision ('@{ref.revision}') only applies to Hub models, "
                          f"but {ref.path} is a local folder")
    return local


def on_hub(ref: ModelRef, hub: Any, open_remote: Callable[[], Any]) -> Any:
    """``open_remote()`` for a reference that is not a local folder, with one error naming both halves."""
    local = Path(ref.path).expanduser()
    if hub is not None and looks_like_repo_id(ref.path):
        try:
            return open_remote()
        except HubError as exc:
            # Say both halves: people mistype local paths far more often than repo ids.
            raise HubError(f"model not found: {ref}: no local folder at {local}, and on the Hub: {exc.message}",
                           hint=exc.hint, kind=exc.kind, missing=exc.missing, reason=exc.reason,
                           subject=str(ref)) from None
    windows = _windows_path(ref.path)
    if windows is not None:
        name = windows.name if windows.anchor else windows.as_posix()
        raise SourceError(f"model not found: {ref} is a Windows path and no folder '{name}' is next to the spec "
                          "or in the working directory", hint=f"copy or link the model folder to ./{name}, or use its "
                                                              "Hub repo id")
    problem = repo_id_problem(ref.path)
    if problem is not None and "/" in ref.path and not ref.path.startswith(("/", ".", "~")):
        raise SourceError(f"model not found: {ref}: no local folder at {local}, and not a valid Hub repo id "
                          f"({problem})", hint="check the path or the repo id")
    hint = "check the path" if problem is not None else "Hub models need network access"
    raise SourceError(f"model not found: {ref} (no local folder at {local})", hint=hint)


def looks_like_repo_id(path: str) -> bool:
    return repo_id_problem(path) is None


def repo_id_problem(path: str) -> str | None:
    """Why ``path`` cannot be a Hub repo id (our own check, so the Hub client never raises on it); None if it can."""
    parts = path.split("/")
    if not 1 <= len(parts) <= 2 or not all(parts):
        return "a repo id is 'name' or 'org/name'"
    if len(path) > 96:
        return "longer than 96 characters"
    for part in parts:
        if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in part):
            return "only letters, digits, '-', '_' and '.' are allowed"
        if part[0] in "-." or part[-1] in "-." or ".." in part or "--" in part:
            return "a part may not start or end with '-' or '.', nor hold '..' or '--'"
    return None
