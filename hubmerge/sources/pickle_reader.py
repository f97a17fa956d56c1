"""PyTorch pickle checkpoints (``pytorch_model*.bin``), read only when the user allows it.

Unpickling runs whatever code the file names, so these files are refused unless ``--allow-pickle`` is
given, and even then they go through ``torch.load(weights_only=True)``: torch's restricted unpickler,
which accepts tensors and plain containers and refuses any other global (``os.system``, ``eval``, a
class's ``__reduce__``...). Files are memory-mapped (``mmap=True``), and a reader keeps only one shard's
state dict open at a time, so memory stays bounded by a shard even for large models.
"""

from __future__ import annotations

import logging
import pickle
import threading
from pathlib import Path
from typing import Callable

import torch

from hubmerge.errors import SourceError
from hubmerge.sources.safetensors_format import DTYPE_NAMES, TensorInfo

logger = logging.getLogger(__name__)

PICKLE_SINGLE_FILE = "pytorch_model.bin"
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
ALLOW_HINT = ("pass --allow-pickle (MergeOptions(allow_pickle=True)) to load it with torch.load(weights_only=True), "
              "or convert the model to safetensors first (e.g. transformers' save_pretrained(safe_serialization=True))")


def refuse_pickle_files(files: list[str], model: str) -> SourceError:
    """The error for a model whose only weights are pickles and no --allow-pickle."""
    names = ", ".join(sorted(files)[:3]) + (", ..." if len(files) > 3 else "")
    return SourceError(
        f"{model} has only pickle checkpoints ({names}); unpickling a file can execute arbitrary code, "
        "so hubmerge does not read them by default",
        hint=ALLOW_HINT,
    )


def load_state_dict(path: Path, display: str) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from one pickle file, through torch's weights-only unpickler."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            # The pre-1.6 (non-zip) format cannot be memory-mapped: the whole shard is read into memory.
            logger.info("%s uses the legacy torch format; reading it without mmap", display)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SourceError(f"{display}: refused to unpickle it: {_unsafe_detail(exc)}",
                          hint="the file holds code or objects other than tensors and may be malicious; "
                               "get the model as safetensors from a source you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise SourceError(f"{display}: not a readable PyTorch checkpoint ({_first_line(exc)})",
                          hint="the file may be truncated or corrupt; download it again") from None
    if not isinstance(obj, dict):
        raise SourceError(f"{display}: expected a state dict (a mapping of names to tensors), "
                          f"found {type(obj).__name__}")
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise SourceError(f"{display}: entry {str(name)[:200]!r} is not a named tensor",
                              hint="only flat state dicts (as transformers writes them) are supported")
    return obj


def _unsafe_detail(exc: Exception) -> str:
    """The line of torch's message that names what was refused (not its advice to turn the check off)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line
    return lines[-1] if lines else type(exc).__name__


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pickle_headers(path: Path, file: str, display: str) -> dict[str, TensorInfo]:
    """Describe a pickle shard like a safetensors header: name, dtype, shape and a byte span.

    The spans are not file offsets (a pickle has none we could range-read); they lay the tensors out back
    to back so sizes add up and plans stay comparable between runs."""
    state = load_state_dict(path, display)
    infos: dict[str, TensorInfo] = {}
    offset = 0
    for name, tensor in state.items():
        code = DTYPE_NAMES.get(tensor.dtype)
        if code is None:
            raise SourceError(f"{display}: tensor '{name}' has unsupported dtype {tensor.dtype}")
        nbytes = tensor.numel() * tensor.element_size()
        infos[name] = TensorInfo(name, file, code, tuple(tensor.shape), offset, offset + nbytes)
        offset += nbytes
    return infos


class PickleReader:
    """A TensorReader over pickle shards. One shard's (memory-mapped) state dict is open at a time; each
    tensor handed out is a copy that owns its memory."""

    def __init__(self, paths: dict[str, Path], display: str, *, root: Path | None = None,
                 load: Callable[[Path, str], dict[str, torch.Tensor]] = load_state_dict):
        self.paths = paths  # file (as recorded in TensorInfo) -> local path
        self.display = display
        self.root = root  # the model folder, for local models (the card reads its README there)
        self._load = load
        self._lock = threading.Lock()
        self._open_file: str | None = None
        self._state: dict[str, torch.Tensor] | None = None
        self.loads = 0  # how many times a shard was (re)opened; tests check the one-shard bound with it

    def read(self, info: TensorInfo) -> torch.Tensor:
        with self._lock:
            if self._open_file != info.file:
                self._state = None  # drop the previous shard before opening the next
                self._state = self._load(self.paths[info.file], f"{self.display}/{info.file}")
                self._open_file = info.file
                self.loads += 1
            tensor = self._state.get(info.name)
            if tensor is None or tuple(tensor.shape) != info.shape or DTYPE_NAMES.get(tensor.dtype) != info.dtype:
                raise SourceError(f"{self.display}/{info.file}: tensor '{info.name}' changed since it was planned",
                                  hint="the file was modified during the merge; run again")
            return tensor.clone(memory_format=torch.contiguous_format)

    def close(self) -> None:
        with self._lock:
            self._state = None
            self._open_file = None
