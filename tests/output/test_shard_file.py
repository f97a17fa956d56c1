"""How shard bytes reach the disk: direct I/O from aligned staging buffers, or the page cache where the
filesystem does not allow direct I/O. Either way the file holds exactly the bytes written, and a disk
error is reported naming the file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from hubmerge.errors import OutputError
from hubmerge.output.shard_file import BufferedShardFile, DirectShardFile, open_shard_file


def _pieces(seed: int) -> list[torch.Tensor]:
    """Chunks of awkward sizes (empty, 1 byte, odd, exactly a buffer, several buffers) and random bytes."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [0, 1, 4095, 4096, 4097, 8192, 3, 20_000, 0, 12_289, 7]
    return [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen) for n in sizes]


def _expected(pieces: list[torch.Tensor]) -> bytes:
    return b"".join(p.numpy().tobytes() for p in pieces)


def _direct(path: Path, **kw) -> DirectShardFile:
    f = DirectShardFile.open(path)
    if f is None:
        pytest.skip(f"{path.parent} does not do direct I/O")
    f._close()  # reopen with small buffers, so the pieces cross many buffer boundaries
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_DIRECT)
    return DirectShardFile(path, fd, **kw)


@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_direct_writes_exactly_the_bytes_given(tmp_path, buffers):
    path = tmp_path / "shard.bin"
    f = _direct(path, buffer_bytes=8192, buffers=buffers)
    pieces = _pieces(buffers)
    for p in pieces:
        f.write(p)
    f.finish()
    data = path.read_bytes()
    assert len(data) == sum(p.numel() for p in pieces)  # the padding of the last block is truncated away
    assert data == _expected(pieces)


def test_direct_total_aligned_needs_no_padding(tmp_path):
    path = tmp_path / "shard.bin"
    f = _direct(path, buffer_bytes=8192, buffers=2)
    block = torch.arange(4096 * 3, dtype=torch.int64).to(torch.uint8)
    f.write(block)
    f.finish()
    assert path.read_bytes() == block.numpy().tobytes()


def test_buffered_writes_exactly_the_bytes_given(tmp_path):
    path = tmp_path / "shard.bin"
    f = BufferedShardFile(path)
    pieces = _pieces(7)
    for p in pieces:
        f.write(p)
    f.finish()
    assert path.read_bytes() == _expected(pieces)


def test_a_file_that_refuses_direct_writes_gets_none_and_no_leaked_descriptor(tmp_path):
    """``open`` probes with one aligned write, since O_DIRECT can be accepted at open and refused on write;
    a FIFO refuses positioned writes, a real refusal standing in for such a filesystem."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that opening for writing does not block
    try:
        before = len(os.listdir("/proc/self/fd"))
        assert DirectShardFile.open(fifo) is None
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(reader)


def test_direct_io_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBMERGE_DIRECT_IO", "0")
    f = open_shard_file(tmp_path / "forced.bin")
    assert isinstance(f, BufferedShardFile)
    f.abort()
    monkeypatch.setenv("HUBMERGE_DIRECT_IO", "1")
    f = open_shard_file(tmp_path / "direct.bin")
    f.abort()
    assert isinstance(f, DirectShardFile) or DirectShardFile.open(tmp_path / "probe.bin") is None


def test_a_disk_error_names_the_file_and_leaves_no_thread(tmp_path):
    path = tmp_path / "shard.bin"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # every write fails (EBADF): stands in for a failing disk
    f = DirectShardFile(path, fd, buffer_bytes=4096, buffers=2)
    with pytest.raises(OutputError, match="writing shard.bin failed") as err:
        for _ in range(4):
            f.write(torch.zeros(4096, dtype=torch.uint8))
        f.finish()
    assert err.value.hint and "free space" in err.value.hint
    f.abort()
    assert not [t for t in threading.enumerate() if t.name.startswith("hubmerge-disk")]
    with pytest.raises(OSError):
        os.fstat(fd)  # closed


def test_abort_closes_without_writing_the_rest(tmp_path):
    path = tmp_path / "shard.bin"
    f = _direct(path, buffer_bytes=8192, buffers=2)
    f.write(torch.ones(10_000, dtype=torch.uint8))
    f.abort()
    f.abort()  # twice is harmless
    assert path.stat().st_size <= 8192  # at most the full buffer went out; the partial one never did
