"""How a shard's bytes reach the disk.

A merge writes each byte of its output once and never reads it back, so the page cache only gets in the
way: copying into it costs CPU the merge needs, and writing gigabytes through it evicts the inputs that
are still to be read. ``DirectShardFile`` writes with ``O_DIRECT`` from a few aligned staging buffers,
on a helper thread, so the disk works while the merge goes on and the final fsync has nothing left to
wait for. Where the filesystem refuses direct I/O (tmpfs, some network and FUSE filesystems, other
OSes), ``BufferedShardFile`` writes through the page cache and starts the writeback in the background.
``HUBMERGE_DIRECT_IO=0`` forces the buffered path.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import torch

from hubmerge.errors import OutputError

logger = logging.getLogger(__name__)

# Direct I/O needs the buffer address, the length and the file offset aligned to the device's logical
# block size: 4096 covers every block size in use (512 and 4096).
_ALIGN = 4096


class ShardFile(Protocol):
    def write(self, data: torch.Tensor) -> None:
        """Append the bytes of a contiguous uint8 CPU tensor."""

    def finish(self) -> None:
        """Everything written is on the disk (fsynced) and the file is closed."""

    def abort(self) -> None:
        """Close without caring whether what was written reaches the disk (the merge is failing)."""


def open_shard_file(path: Path) -> ShardFile:
    if os.environ.get("HUBMERGE_DIRECT_IO", "1") != "0":
        direct = DirectShardFile.open(path)
        if direct is not None:
            return direct
    return BufferedShardFile(path)


def _disk_error(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"writing {path.name} failed: {exc.strerror or exc}",
                       hint="check the free space and the disk holding the output folder")


def as_memoryview(data: torch.Tensor) -> memoryview:
    """The bytes of a flat uint8 CPU tensor, without copying."""
    return memoryview(data.numpy()) if data.numel() else memoryview(b"")


class DirectShardFile:
    """Appends through ``O_DIRECT`` from ``buffers`` aligned staging buffers of ``buffer_bytes`` each.

    Filling a buffer is a copy that lets go of the GIL (``torch`` copy); a full buffer goes to a single
    I/O thread, which writes it at its offset while the next one fills. The last, partial block is
    written padded to the alignment and the file is then truncated to its true length."""

    def __init__(self, path: Path, fd: int, *, buffer_bytes: int = 4 << 20, buffers: int = 4):
        if buffer_bytes % _ALIGN:
            raise ValueError("buffer_bytes must be a multiple of the direct I/O alignment")
        self.path = path
        self._fd = fd
        # Anonymous mappings are page aligned, as direct I/O needs.
        self._maps = [mmap.mmap(-1, buffer_bytes) for _ in range(buffers)]
        self._views = [torch.frombuffer(m, dtype=torch.uint8) for m in self._maps]
        self._in_flight: deque[tuple[int, Future]] = deque()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="hubmerge-disk")
        self._current = 0
        self._fill = 0
        self._offset = 0  # file offset of the current buffer's first byte
        self._closed = False

    @classmethod
    def open(cls, path: Path) -> DirectShardFile | None:
        """None where this filesystem does not do direct I/O: opening with ``O_DIRECT`` can succeed where
        writing then fails, so one aligned block is written (and truncated away) to find out."""
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError:
            return None
        probe = mmap.mmap(-1, _ALIGN)
        try:
            os.pwrite(fd, probe, 0)
            os.ftruncate(fd, 0)
        except OSError:
            os.close(fd)
            logger.debug("%s: no direct I/O here, writing through the page cache", path.parent)
            return None
        finally:
            probe.close()
        return cls(path, fd)

    def write(self, data: torch.Tensor) -> None:
        data = data.reshape(-1)
        done, total = 0, data.numel()
        while done < total:
            room = self._views[self._current].numel() - self._fill
            n = min(room, total - done)
            self._views[self._current][self._fill : self._fill + n].copy_(data[done : done + n])
            self._fill += n
            done += n
            if self._fill == self._views[self._current].numel():
                self._submit(self._fill)

    def _submit(self, length: int) -> None:
        """Hand the current buffer's first ``length`` bytes (aligned) to the I/O thread; take the next buffer,
        waiting for its previous write if it is still in flight."""
        view = memoryview(self._maps[self._current])[:length]
        self._in_flight.append((self._current, self._io.submit(self._write_all, view, self._offset)))
        self._offset += length
        self._current = (self._current + 1) % len(self._maps)
        self._fill = 0
        while self._in_flight and (len(self._in_flight) == len(self._maps)
                                   or self._in_flight[0][0] == self._current):
            self._wait_oldest()

    def _write_all(self, view: memoryview, offset: int) -> None:
        while len(view):
            n = os.pwrite(self._fd, view, offset)
            if n <= 0:
                raise OSError(28, "no space left on device")
            if n % _ALIGN and n != len(view):  # a short write that breaks the alignment: cannot go on directly
                raise OSError(5, f"short direct write of {n} bytes")
            view, offset = view[n:], offset + n

    def _wait_oldest(self) -> None:
        _, future = self._in_flight.popleft()
        try:
            future.result()
        except OSError as exc:
            raise _disk_error(self.path, exc) from None

    def finish(self) -> None:
        size = self._offset + self._fill
        try:
            if self._fill:
                padded = -(-self._fill // _ALIGN) * _ALIGN
                self._views[self._current][self._fill : padded].zero_()
                self._submit(padded)
            while self._in_flight:
                self._wait_oldest()
            try:
                os.ftruncate(self._fd, size)
                os.fsync(self._fd)
            except OSError as exc:
                raise _disk_error(self.path, exc) from None
        finally:
            self._close()

    def abort(self) -> None:
        for _, future in self._in_flight:
            future.cancel()
        self._in_flight.clear()
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._io.shutdown(wait=True)
        os.close(self._fd)
        # The staging mappings are unmapped when the last view of them goes (a failed write's traceback may
        # still hold one for a while), not closed here.
        self._views = self._maps = []


class BufferedShardFile:
    """Appends through the page cache, flushing in the background as it goes (see ``BackgroundFlush``)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = open(path, "wb", buffering=1 << 20)
        except OSError as exc:
            raise _disk_error(path, exc) from None
        self._flush = BackgroundFlush()

    def write(self, data: torch.Tensor) -> None:
        view = as_memoryview(data.reshape(-1))
        try:
            self._file.write(view)
        except OSError as exc:
            raise _disk_error(self.path, exc) from None
        self._flush.wrote(self._file.fileno(), len(view))

    def finish(self) -> None:
        try:
            self._file.flush()
            self._flush.wait()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise _disk_error(self.path, exc) from None
        finally:
            self._file.close()

    def abort(self) -> None:
        try:
            self._flush.wait()
        except OutputError:
            pass  # the merge is failing already; its own error is the one to report
        self._file.close()


class BackgroundFlush:
    """Pushes a file's written pages to disk on a helper thread while more is being written.

    A shard is fsynced before it is renamed into place; left to the end, that fsync waits for the whole
    shard to reach the disk (seconds per GB on ordinary disks) while nothing else runs. Flushing every
    ``every`` bytes in the background overlaps the disk with the merging, so the final fsync only waits
    for the tail."""

    def __init__(self, every: int = 256 << 20):
        self.every = every
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._error: list[OSError] = []

    def wrote(self, fd: int, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending < self.every or (self._thread is not None and self._thread.is_alive()):
            return
        self._pending = 0
        self._thread = threading.Thread(target=self._flush, args=(fd,), name="hubmerge-flush", daemon=True)
        self._thread.start()

    def _flush(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:  # reported by wait(); the final fsync would meet the same error
            self._error.append(exc)

    def wait(self) -> None:
        """Before the file is fsynced or closed: the flush in flight must not outlive its descriptor."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._pending = 0
        if self._error:
            raise OutputError(f"writing the output to disk failed: {self._error.pop()}")
