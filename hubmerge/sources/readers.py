"""Tensor readers: one small interface, interchangeable for local files, the HF cache and the Hub.

A reader turns a ``TensorInfo`` into a CPU tensor that owns its memory. Readers are thread-safe: the
executor calls them from prefetch threads.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

import torch

from hubmerge.errors import SourceError
from hubmerge.sources.safetensors_format import TensorInfo


class TensorReader(Protocol):
    def read(self, info: TensorInfo) -> torch.Tensor: ...

    def close(self) -> None: ...


class BufferPool:
    """Recycles read buffers. Fresh large allocations are page-faulted and zeroed by the kernel on every
    use; a merge reads tensors of a handful of sizes over and over, so reusing buffers saves that work."""

    def __init__(self, max_bytes: int = 128 << 20):
        self.max_bytes = max_bytes
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        with self._lock:
            best = None
            for i, buf in enumerate(self._free):
                if buf.numel() >= nbytes and (best is None or buf.numel() < self._free[best].numel()):
                    best = i
            if best is not None and self._free[best].numel() <= 2 * nbytes:
                return self._free.pop(best)[:nbytes]
        return torch.empty(nbytes, dtype=torch.uint8)

    def give(self, tensor: torch.Tensor) -> None:
        """Return the buffer behind a tensor that ``take`` handed out (and nothing else refers to)."""
        base = tensor._base if tensor._base is not None else tensor
        if base.dtype != torch.uint8 or base.device.type != "cpu":
            return
        with self._lock:
            if sum(b.numel() for b in self._free) + base.numel() <= self.max_bytes:
                self._free.append(base)


POOL = BufferPool()


def tensor_from_bytes(buf: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    """View a uint8 buffer as the tensor ``info`` describes (no copy)."""
    if info.numel == 0:
        return torch.empty(info.shape, dtype=info.torch_dtype)
    return buf.view(info.torch_dtype).reshape(info.shape)


class LocalFileReader:
    """Reads tensors with ``pread`` from files in one folder: memory we own, freed as soon as it is used.

    ``pread`` rather than mmap keeps the resident set honest (no lingering mapped pages) and releases
    the GIL, so prefetch threads overlap I/O with the math.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, file: str) -> int:
        with self._lock:
            fd = self._fds.get(file)
            if fd is None:
                path = self.root / file
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError as exc:
                    raise SourceError(f"cannot open {path}: {exc.strerror}") from None
                self._fds[file] = fd
            return fd

    def read(self, info: TensorInfo) -> torch.Tensor:
        buf = POOL.take(info.nbytes)
        if info.nbytes:
            view = memoryview(buf.numpy())
            fd = self._fd(info.file)
            done = 0
            while done < info.nbytes:
                n = os.preadv(fd, [view[done:]], info.start + done)
                if n <= 0:
                    raise SourceError(f"{self.root / info.file}: unexpected end of file reading '{info.name}'",
                                      hint="the file was truncated or changed during the merge")
                done += n
        return tensor_from_bytes(buf, info)

    def read_prefix(self, file: str, length: int, offset: int = 0) -> bytes:
        fd = self._fd(file)
        return os.pread(fd, length, offset)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
