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
        buf = torch.empty(info.nbytes, dtype=torch.uint8)
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
