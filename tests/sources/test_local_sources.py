"""Reading local models: headers checked without trusting them, indexes kept inside the folder."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hubmerge.errors import SourceError
from hubmerge.sources.open import open_model
from hubmerge.spec.model import ModelRef


def _model_dir(tmp_path: Path, name: str = "m") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
    return d


def _raw_file(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_reads_tensors_exactly(tmp_path):
    d = _model_dir(tmp_path)
    tensors = {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4),
               "b": torch.randn(5, dtype=torch.float64).to(torch.bfloat16)}
    save_file(tensors, str(d / "model.safetensors"))
    src = open_model(ModelRef(str(d)))
    try:
        for name, t in tensors.items():
            got = src.reader.read(src.tensors[name])
            assert got.dtype == t.dtype and torch.equal(got, t)
    finally:
        src.close()


def test_sharded_index(tmp_path):
    d = _model_dir(tmp_path)
    save_file({"a": torch.ones(2)}, str(d / "s1.safetensors"))
    save_file({"b": torch.zeros(3)}, str(d / "s2.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors",
                                                                               "b": "s2.safetensors"}}))
    src = open_model(ModelRef(str(d)))
    assert {n: i.file for n, i in src.tensors.items()} == {"a": "s1.safetensors", "b": "s2.safetensors"}
    src.close()


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_escaping_folder_is_rejected(tmp_path, target):
    d = _model_dir(tmp_path)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": target}}))
    with pytest.raises(SourceError, match="outside the model folder"):
        open_model(ModelRef(str(d)))


def test_header_length_beyond_file(tmp_path):
    d = _model_dir(tmp_path)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(SourceError, match="runs past the end of the file"):
        open_model(ModelRef(str(d)))


def test_huge_header_length_is_bounded(tmp_path):
    d = _model_dir(tmp_path)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(SourceError, match="header length is implausible") as err:
        open_model(ModelRef(str(d)))
    assert str(2**40) not in str(err.value)  # never echo foreign bytes as a number


def test_offsets_outside_data(tmp_path):
    d = _model_dir(tmp_path)
    _raw_file(d / "model.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(SourceError, match="outside the data") as err:
        open_model(ModelRef(str(d)))
    assert "'w'" in str(err.value)


def test_unknown_dtype(tmp_path):
    d = _model_dir(tmp_path)
    _raw_file(d / "model.safetensors", {"w": {"dtype": "Q4_K", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16)
    with pytest.raises(SourceError, match="unknown dtype 'Q4_K'"):
        open_model(ModelRef(str(d)))


def test_overlapping_tensors(tmp_path):
    d = _model_dir(tmp_path)
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    _raw_file(d / "model.safetensors", header, b"\0" * 24)
    with pytest.raises(SourceError, match="overlap"):
        open_model(ModelRef(str(d)))


def test_size_disagrees_with_shape(tmp_path):
    d = _model_dir(tmp_path)
    _raw_file(d / "model.safetensors", {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16)
    with pytest.raises(SourceError, match="expected 12"):
        open_model(ModelRef(str(d)))


def test_pickle_only_model_is_refused(tmp_path):
    d = _model_dir(tmp_path)
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(SourceError, match="pickle") as err:
        open_model(ModelRef(str(d)))
    assert "safetensors" in err.value.hint


def test_missing_model(tmp_path):
    with pytest.raises(SourceError, match="model not found"):
        open_model(ModelRef(str(tmp_path / "nope")))


def test_missing_config(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_file({"a": torch.ones(1)}, str(d / "model.safetensors"))
    with pytest.raises(SourceError, match="config.json"):
        open_model(ModelRef(str(d)))


def test_index_disagreeing_with_shards(tmp_path):
    d = _model_dir(tmp_path)
    save_file({"a": torch.ones(2)}, str(d / "s1.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors",
                                                                               "b": "s1.safetensors"}}))
    with pytest.raises(SourceError, match="'b'"):
        open_model(ModelRef(str(d)))


def test_mapped_reads_are_private_and_not_pooled(tmp_path):
    """A read tensor maps the file privately: writing to it (methods work in place) never reaches the file,
    and the buffer pool never takes a mapping for reuse."""
    from hubmerge.sources.readers import POOL

    d = _model_dir(tmp_path)
    original = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    path = d / "model.safetensors"
    save_file({"w": original}, str(path))
    before = path.read_bytes()
    src = open_model(ModelRef(str(d)))
    try:
        got = src.reader.read(src.tensors["w"])
        assert torch.equal(got, original)
        got.mul_(-3.0)  # in place, like a sparsifier
        assert path.read_bytes() == before
        assert torch.equal(src.reader.read(src.tensors["w"]), original)  # a fresh read sees the file
        pooled = len(POOL._free)
        POOL.give(got)
        assert len(POOL._free) == pooled
    finally:
        src.close()


def test_file_truncated_after_planning_is_a_clear_error(tmp_path):
    d = _model_dir(tmp_path)
    path = d / "model.safetensors"
    save_file({"a": torch.ones(1000), "b": torch.ones(1000)}, str(path))
    src = open_model(ModelRef(str(d)))
    try:
        info = src.tensors["b"] if src.tensors["b"].start > src.tensors["a"].start else src.tensors["a"]
        with open(path, "r+b") as f:
            f.truncate(info.start + 10)
        with pytest.raises(SourceError, match=f"unexpected end of file reading '{info.name}'"):
            src.reader.read(info)
    finally:
        src.close()


def test_unaligned_tensor_data_is_read_with_pread(tmp_path):
    """Data offsets are not guaranteed to be multiples of the element size; such tensors are copied, not mapped."""
    d = _model_dir(tmp_path)
    values = torch.arange(6, dtype=torch.float32)
    header = {"x": {"dtype": "F32", "shape": [6], "data_offsets": [1, 25]}}
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)  # the data section starts 8-aligned, the tensor one byte in
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" + values.numpy().tobytes())
    src = open_model(ModelRef(str(d)))
    try:
        info = src.tensors["x"]
        assert info.start % 4 == 1
        got = src.reader.read(info)
        assert torch.equal(got, values)
    finally:
        src.close()


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_read_faults_the_mapped_pages_in(tmp_path):
    """``read`` runs on the prefetch thread: the pages must be resident when it returns, not faulted in later
    by the math (the populate call is best effort, so this checks it did its work on this kernel)."""
    from hubmerge.sources import readers

    release = tuple(int(p) for p in re.findall(r"\d+", os.uname().release)[:2])
    if readers._MADVISE is None or release < (5, 14):
        pytest.skip("MADV_POPULATE_READ needs Linux 5.14+")
    d = _model_dir(tmp_path)
    save_file({"w": torch.ones(16 << 20, dtype=torch.float32)}, str(d / "model.safetensors"))  # 64 MiB
    src = open_model(ModelRef(str(d)))
    try:
        info = src.tensors["w"]
        (d / "model.safetensors").read_bytes()  # in the page cache, as after a download
        before = _resident_bytes()
        got = src.reader.read(info)
        grown = _resident_bytes() - before
        assert grown > 0.9 * info.nbytes, f"only {grown} of {info.nbytes} bytes resident after read"
        assert float(got[-1]) == 1.0
    finally:
        src.close()
