"""Streaming sharded safetensors output.

Every output tensor's name, dtype and shape is known from the plan, so each shard's header is written
first and tensor bytes are streamed behind it: nothing is buffered beyond the tensor being written.
Shards are written as ``<name>.partial`` (``shard_file`` says how the bytes reach the disk), renamed once
complete and fsynced, and recorded in a progress file with the digest of every tensor in them; ``--resume``
re-reads a finished shard and checks those digests before trusting it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from hubmerge.errors import OutputError
from hubmerge.output.shard_file import as_memoryview, open_shard_file
from hubmerge.sources.safetensors_format import DTYPE_NAMES, ITEM_SIZES, build_header

logger = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
PROGRESS_NAME = ".hubmerge-progress.json"
DEFAULT_MAX_SHARD_SIZE = 5_000_000_000


@dataclass(frozen=True)
class ShardEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_SIZES[self.dtype]


@dataclass
class Shard:
    filename: str
    entries: list[ShardEntry] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def header(self) -> bytes:
        return build_header([(e.name, e.dtype, e.shape) for e in self.entries], {"format": "pt"})


def layout_shards(entries: list[ShardEntry], max_shard_size: int) -> list[Shard]:
    """Greedy, in plan order: a shard takes tensors until the next would pass the limit."""
    shards: list[Shard] = []
    current = Shard("")
    for e in entries:
        if current.entries and current.data_bytes + e.nbytes > max_shard_size:
            shards.append(current)
            current = Shard("")
        current.entries.append(e)
    if current.entries:
        shards.append(current)
    n = len(shards)
    for i, s in enumerate(shards):
        s.filename = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    return shards


def weight_map(shards: list[Shard]) -> dict[str, str]:
    return {e.name: s.filename for s in shards for e in s.entries}


def index_document(shards: list[Shard], extra_metadata: dict[str, str] | None = None) -> dict:
    total = sum(s.data_bytes for s in shards)
    return {"metadata": {"total_size": total, **(extra_metadata or {})}, "weight_map": weight_map(shards)}


def raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The raw little-endian bytes of a CPU tensor as a flat uint8 tensor (no copy when contiguous)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without copying when it is contiguous."""
    return as_memoryview(raw_bytes(tensor))


def tensor_hasher(name: str, dtype: str, shape: tuple[int, ...]):
    """A sha256 fed with a tensor's name, dtype and shape; its bytes follow (see ``tensor_digest``)."""
    h = hashlib.sha256()
    h.update(f"{name}\0{dtype}\0{list(shape)}\0".encode())
    return h


def tensor_digest(name: str, dtype: str, shape: tuple[int, ...], data: memoryview | bytes) -> bytes:
    h = tensor_hasher(name, dtype, shape)
    h.update(data)
    return h.digest()


def content_hash(digests: dict[str, bytes]) -> str:
    """Hash of all output tensors (names, dtypes, shapes, bytes), independent of the shard layout."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(digests[name])
    return "sha256:" + h.hexdigest()


def shard_digests(path: Path, shard: Shard) -> dict[str, str] | None:
    """Digests of the tensors in a finished shard file, or None if it is not exactly the planned shard."""
    header = shard.header()
    try:
        with open(path, "rb") as f:
            if f.read(len(header)) != header:
                return None
            out = {}
            for e in shard.entries:
                data = f.read(e.nbytes)
                if len(data) != e.nbytes:
                    return None
                out[e.name] = tensor_digest(e.name, e.dtype, e.shape, data).hex()
            if f.read(1):
                return None
    except OSError:
        return None
    return out


class Progress:
    """What a partial output folder already holds; written atomically after every finished shard."""

    def __init__(self, folder: Path, fingerprint: str):
        self.path = folder / PROGRESS_NAME
        self.fingerprint = fingerprint
        self.shards: dict[str, bool] = {}  # filename -> finished
        self.digests: dict[str, str] = {}  # tensor name -> hex digest

    @classmethod
    def load(cls, folder: Path, fingerprint: str) -> Progress | None:
        path = folder / PROGRESS_NAME
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if doc.get("fingerprint") != fingerprint:
            return None
        p = cls(folder, fingerprint)
        p.shards = dict(doc.get("shards", {}))
        p.digests = dict(doc.get("digests", {}))
        return p

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "shards": self.shards,
                                   "digests": self.digests}))
        os.replace(tmp, self.path)


class ShardWriter:
    """Writes tensors, in layout order, into the shard files of ``folder``; ``on_shard_done(path)`` is called
    with each shard once it is complete on disk (push uploads it)."""

    def __init__(self, folder: Path, shards: list[Shard], progress: Progress,
                 on_shard_done: Callable[[Path], None] | None = None):
        self.folder = folder
        self.shards = shards
        self.progress = progress
        self.on_shard_done = on_shard_done
        self._shard_of = {e.name: (i, s) for i, s in enumerate(shards) for e in s.entries}
        self._file = None
        self._current: int | None = None
        self._remaining: list[str] = []
        self._hash = None  # the digest of the tensor being written, while its parts arrive
        self._written = 0

    def shard_done(self, shard: Shard) -> bool:
        return shard.filename in self.progress.shards

    def write(self, name: str, tensor: torch.Tensor) -> None:
        entry = self._entry(name)
        if tuple(tensor.shape) != entry.shape:
            raise OutputError(f"tensor '{name}': merged shape {list(tensor.shape)} differs from planned {list(entry.shape)}")
        raw = raw_bytes(tensor)
        if raw.numel() != entry.nbytes:
            raise OutputError(f"tensor '{name}': {raw.numel()} bytes, planned {entry.nbytes}")
        self._append(name, entry, raw)

    def write_part(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next part of a tensor's bytes (parts arrive in row-major order, e.g. one expert of a
        fused MoE tensor at a time); the tensor is complete once all its planned bytes have arrived."""
        entry = self._entry(name)
        if DTYPE_NAMES.get(tensor.dtype) != entry.dtype:
            raise OutputError(f"tensor '{name}': a part of dtype {tensor.dtype} for a planned {entry.dtype} tensor")
        self._append(name, entry, raw_bytes(tensor))

    def _entry(self, name: str) -> ShardEntry:
        index, shard = self._shard_of[name]
        if self._current != index:
            self._open(index, shard)
        if not self._remaining or self._remaining[0] != name:
            raise OutputError(f"internal error: tensor '{name}' arrived out of order for {shard.filename}")
        return next(e for e in shard.entries if e.name == name)

    def _append(self, name: str, entry: ShardEntry, raw: torch.Tensor) -> None:
        if self._hash is None:
            self._hash, self._written = tensor_hasher(entry.name, entry.dtype, entry.shape), 0
        if self._written + raw.numel() > entry.nbytes:
            raise OutputError(f"tensor '{name}': {self._written + raw.numel()} bytes, planned {entry.nbytes}")
        self._file.write(raw)
        self._hash.update(as_memoryview(raw))
        self._written += raw.numel()
        if self._written < entry.nbytes:
            return
        self.progress.digests[name] = self._hash.hexdigest()
        self._hash = None
        self._remaining.pop(0)
        if not self._remaining:
            self._finish(self._shard_of[name][1])

    def _open(self, index: int, shard: Shard) -> None:
        if self._file is not None:
            raise OutputError(f"internal error: {self.shards[self._current].filename} left incomplete")
        path = self.folder / (shard.filename + ".partial")
        self._file = open_shard_file(path)
        self._file.write(torch.frombuffer(bytearray(shard.header()), dtype=torch.uint8))
        self._current = index
        self._remaining = [e.name for e in shard.entries]

    def _finish(self, shard: Shard) -> None:
        file, self._file = self._file, None
        file.finish()
        self._current = None
        os.replace(self.folder / (shard.filename + ".partial"), self.folder / shard.filename)
        self.progress.shards[shard.filename] = True
        self.progress.save()
        logger.debug("wrote %s", shard.filename)
        if self.on_shard_done is not None:
            self.on_shard_done(self.folder / shard.filename)

    def abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.abort()
