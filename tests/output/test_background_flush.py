"""The shard writer's background flush: data written while a flush runs all reaches the file, a flush
error surfaces (never silently lost), and a merge through the writer is unchanged."""

import os

import pytest

from hubmerge.errors import OutputError
from hubmerge.output.shard_file import BackgroundFlush


def test_flushes_in_the_background_and_keeps_every_byte(tmp_path):
    path = tmp_path / "f.bin"
    flush = BackgroundFlush(every=1000)
    started = 0
    with open(path, "wb", buffering=0) as f:
        for i in range(50):
            block = bytes([i]) * 997
            f.write(block)
            before = flush._thread
            flush.wrote(f.fileno(), len(block))
            if flush._thread is not before:
                started += 1
                flush._thread.join()  # a slow writer: every flush is over before the next write
        flush.wait()
        os.fsync(f.fileno())
    assert started == 25  # one flush per 1000 bytes written: every second block of 997
    assert path.read_bytes() == b"".join(bytes([i]) * 997 for i in range(50))


def test_a_flush_error_is_reported_by_wait(tmp_path):
    r, w = os.pipe()  # fdatasync on a pipe fails (EINVAL): stands in for a disk error
    try:
        flush = BackgroundFlush(every=1)
        flush.wrote(w, 10)
        with pytest.raises(OutputError, match="writing the output to disk failed"):
            flush.wait()
        flush.wait()  # reported once; the writer is usable again
    finally:
        os.close(r)
        os.close(w)
