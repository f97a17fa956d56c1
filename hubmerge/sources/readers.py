"""Tensor readers: one small interface, interchangeable for local files, the HF cache and the Hub.

A reader turns a ``TensorInfo`` into a CPU tensor the caller may modify freely. Readers are thread-safe: the
executor calls them from prefetch threads.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from pathlib import Path
from typing import Protocol

import torch

from hubmerge.errors import SourceError
from hubmerge.sources.safetensors_format import TensorInfo


class TensorReader(Protocol):
    """``read`` returns the tensor ``info`` describes. A reader whose ``row_blocks`` is true reads any byte
    range of a file given a ``TensorInfo`` for it (``row_block``), so the executor may read a large tensor
    a block of rows at a time; readers that transform what they read (LoRA folding, MoE assembly, pickles)
    leave it false."""

    def read(self, info: TensorInfo) -> torch.Tensor: ...

    def close(self) -> None: ...


class NoTensors:
    """The reader of a source opened for its side files only (a tokenizer donor): it holds no tensors."""

    row_blocks = False

    def read(self, info) -> torch.Tensor:
        raise KeyError(info.name)

    def close(self) -> None:
        pass


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
        """Return the buffer behind a tensor that ``take`` handed out (and nothing else refers to). Anything
        else is ignored: a mapped tensor's base has the tensor's own (float) dtype, never uint8."""
        base = tensor._base if tensor._base is not None else tensor
        if base.dtype != torch.uint8 or base.device.type != "cpu":
            return
        with self._lock:
            if sum(b.numel() for b in self._free) + base.numel() <= self.max_bytes:
                self._free.append(base)


POOL = BufferPool()


def row_block(info: TensorInfo, first: int, stop: int) -> TensorInfo:
    """The rows ``[first, stop)`` of a tensor as a tensor of their own (same file, a sub-range of its bytes)."""
    row = info.nbytes // info.shape[0]
    return TensorInfo(f"{info.name}[{first}:{stop}]", info.file, info.dtype, (stop - first,) + tuple(info.shape[1:]),
                      info.start + first * row, info.start + stop * row)


def tensor_from_bytes(buf: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    """View a uint8 buffer as the tensor ``info`` describes (no copy)."""
    if info.numel == 0:
        return torch.empty(info.shape, dtype=info.torch_dtype)
    return buf.view(info.torch_dtype).reshape(info.shape)


# Linux 5.14+: fault the pages of a mapping in, read-only (a private mapping stays copy-on-write).
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_CAN_MAP = hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap.mmap, "madvise")


def _libc_madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


# Called through ctypes, which lets go of the GIL for the call: faulting in a large tensor takes tens of
# milliseconds of kernel time, and ``mmap.madvise`` would hold the GIL (and so the math thread) all along.
_MADVISE = _libc_madvise()


def _populate(address: int, length: int) -> None:
    """Fault a mapping's pages in; best effort (an older kernel faults them on first use instead)."""
    if _MADVISE is not None:
        _MADVISE(address, length, _MADV_POPULATE_READ)


class LocalFileReader:
    """Reads tensors from files in one folder, each tensor into memory released as soon as it is dropped.

    A tensor is a private mapping of its byte range: no copy out of the page cache, and its pages are faulted
    in by ``read`` (on a prefetch thread), not by the math. Private and writable, so a method that works in
    place only copies the pages it touches, never writes the file. Dropping the tensor unmaps the range, so
    the resident set counts only the tensors in flight. Where mapping is not possible (another OS, data not
    aligned to its element size) the bytes are read with ``pread`` into a pooled buffer instead.
    """

    row_blocks = True

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

    def _truncated(self, info: TensorInfo) -> SourceError:
        return SourceError(f"{self.root / info.file}: unexpected end of file reading '{info.name}'",
                           hint="the file was truncated or changed during the merge")

    def read(self, info: TensorInfo) -> torch.Tensor:
        if info.nbytes and _CAN_MAP and info.start % info.torch_dtype.itemsize == 0:
            return self._map(info)
        buf = POOL.take(info.nbytes)
        if info.nbytes:
            view = memoryview(buf.numpy())
            fd = self._fd(info.file)
            done = 0
            while done < info.nbytes:
                n = os.preadv(fd, [view[done:]], info.start + done)
                if n <= 0:
                    raise self._truncated(info)
                done += n
        return tensor_from_bytes(buf, info)

    def _map(self, info: TensorInfo) -> torch.Tensor:
        fd = self._fd(info.file)
        # A mapping past the end of the file would fault (SIGBUS) on access: check the size first.
        if os.fstat(fd).st_size < info.start + info.nbytes:
            raise self._truncated(info)
        start = info.start - info.start % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(fd, info.start + info.nbytes - start, flags=mmap.MAP_PRIVATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        # The tensor keeps the mapping alive; the mapping is closed when the last view of it goes.
        flat = torch.frombuffer(mapped, dtype=info.torch_dtype, count=info.numel, offset=info.start - start)
        _populate(flat.data_ptr() - (info.start - start), len(mapped))
        return flat.view(info.shape)

    def read_prefix(self, file: str, length: int, offset: int = 0) -> bytes:
        fd = self._fd(file)
        return os.pread(fd, length, offset)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
