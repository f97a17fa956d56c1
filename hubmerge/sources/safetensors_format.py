"""The safetensors file format: parse and check headers without trusting them; build headers to write.

Layout: 8-byte little-endian header length N, N bytes of JSON header, then the data buffer. Each header
entry is ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the data buffer.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import torch

from hubmerge.errors import SourceError
from hubmerge.spec.bounded import load_json, shorten

# Bounds on what an untrusted header may make us read or allocate.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_TENSORS = 1_000_000
MAX_NAME_LENGTH = 1024
MAX_DIMS = 16
MAX_HEADER_DEPTH = 8  # {"name": {"shape": [..]}} is 3 deep; anything far deeper is crafted

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ITEM_SIZES = {name: torch.empty((), dtype=dt).element_size() for name, dt in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file (relative to the model), dtype code, shape, absolute byte range."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    file: str
    header_size: int  # N, the JSON length
    file_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return 8 + self.header_size


def header_length(prefix: bytes, *, file: str, file_size: int) -> int:
    """Decode and bound the 8-byte header length."""
    if len(prefix) < 8 or file_size < 8:
        raise SourceError(f"{file}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", prefix[:8])
    # The length is foreign bytes: say it is implausible, never echo it (a linked text file would show its
    # first 8 bytes as a number).
    if n > MAX_HEADER_BYTES:
        raise SourceError(f"{file}: not a safetensors file (its header length is implausible: over the "
                          f"{MAX_HEADER_BYTES // (1024 * 1024)} MB limit)", hint="the file is corrupt or not safetensors")
    if 8 + n > file_size:
        raise SourceError(f"{file}: its header length runs past the end of the file ({file_size} bytes)",
                          hint="the file is truncated, corrupt or not safetensors; download it again")
    return n


def parse_header(raw: bytes, *, file: str, file_size: int, display: str | None = None) -> SafetensorsHeader:
    """Check every entry of a header (``raw`` is the JSON bytes) against the file size.

    ``file`` is the name recorded in each TensorInfo (relative to the model); ``display`` names the
    file in error messages (default: ``file``)."""
    rel, file = file, display or file
    header_size = len(raw)
    doc = load_json(raw, source=f"{file}: the safetensors header", max_bytes=MAX_HEADER_BYTES,
                    max_depth=MAX_HEADER_DEPTH, unique_keys=True)
    if not isinstance(doc, dict):
        raise SourceError(f"{file}: the safetensors header must be a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SourceError(f"{file}: __metadata__ must map strings to strings")
    if len(doc) > MAX_TENSORS:
        raise SourceError(f"{file}: {len(doc)} tensors exceeds the limit of {MAX_TENSORS}")
    data_start = 8 + header_size
    data_len = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        tensors[name] = _entry(name, entry, file=file, rel=rel, data_start=data_start, data_len=data_len)
    _check_overlaps(tensors.values(), file)
    return SafetensorsHeader(rel, header_size, file_size, tensors, metadata)


def _entry(name: str, entry: object, *, file: str, rel: str, data_start: int, data_len: int) -> TensorInfo:
    where = f"{file}: tensor '{name[:MAX_NAME_LENGTH]}'"
    if len(name) > MAX_NAME_LENGTH or not name:
        raise SourceError(f"{file}: a tensor name is empty or longer than {MAX_NAME_LENGTH} characters")
    if not isinstance(entry, dict):
        raise SourceError(f"{where}: header entry must be an object")
    dtype = entry.get("dtype")
    if dtype not in DTYPES:
        raise SourceError(f"{where}: unknown dtype {shorten(repr(dtype), 40)}", hint=f"supported: {', '.join(DTYPES)}")
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise SourceError(f"{where}: invalid shape {shorten(repr(shape), 80)}")
    offsets = entry.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise SourceError(f"{where}: invalid data_offsets {shorten(repr(offsets), 80)}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise SourceError(f"{where}: data_offsets [{begin}, {end}] lie outside the data ({data_len} bytes)",
                          hint="the file is truncated or corrupt")
    expected = math.prod(shape) * ITEM_SIZES[dtype]
    if end - begin != expected:
        raise SourceError(f"{where}: {end - begin} bytes for shape {shape} {dtype} (expected {expected})")
    return TensorInfo(name, rel, dtype, tuple(shape), data_start + begin, data_start + end)


def _check_overlaps(infos, file: str) -> None:
    spans = sorted((i.start, i.end, i.name) for i in infos if i.end > i.start)
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise SourceError(f"{file}: tensors '{n0}' and '{n1}' overlap in the data buffer",
                              hint="the file is corrupt or crafted; refusing to read it")


def build_header(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> bytes:
    """Header bytes (length prefix included) for tensors laid out back to back in the given order."""
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in entries:
        size = math.prod(shape) * ITEM_SIZES[dtype]
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data buffer to 8 bytes, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw
