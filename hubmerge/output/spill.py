"""Outputs whose tensor shapes are known only once computed, written as one safetensors file.

The shard writer writes each header first, so it needs every tensor's name and shape up front. A LoRA
extraction learns them as it goes: the rank of a module comes from its singular values (``sv_epsilon``),
and a module the fine-tune left unchanged is left out. Its tensors are appended to a scratch file in the
output folder as they are computed (nothing stays in memory), and once all are known they are written
through the ``ShardWriter`` into the final file, one mapped tensor at a time: same header, digests, direct
I/O and progress record as every other output.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import torch

from hubmerge.errors import OutputError
from hubmerge.output.shards import Progress, Shard, ShardEntry, ShardWriter, raw_bytes
from hubmerge.sources.safetensors_format import DTYPE_NAMES, DTYPES

SPILL_NAME = ".hubmerge-spill"


class TensorSpill:
    """Append-only scratch file of tensors; ``write_safetensors`` turns it into the final file."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / SPILL_NAME
        self._file = open(self.path, "wb")
        self._entries: list[tuple[ShardEntry, int]] = []
        self._offset = 0
        self._names: set[str] = set()

    @property
    def entries(self) -> list[ShardEntry]:
        return [e for e, _ in self._entries]

    @property
    def nbytes(self) -> int:
        return self._offset

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise OutputError(f"internal error: tensor '{name}' written twice")
        if tensor.dtype not in DTYPE_NAMES:
            raise OutputError(f"tensor '{name}': dtype {tensor.dtype} cannot be stored in safetensors")
        data = raw_bytes(tensor.detach().cpu())
        try:
            self._file.write(memoryview(data.numpy()) if data.numel() else b"")
        except OSError as exc:
            raise OutputError(f"writing {self.path} failed: {exc.strerror or exc}",
                              hint="check the free space on the disk holding the output folder") from None
        self._names.add(name)
        self._entries.append((ShardEntry(name, DTYPE_NAMES[tensor.dtype], tuple(tensor.shape)), self._offset))
        self._offset += data.numel()

    def write_safetensors(self, filename: str, progress: Progress) -> Shard:
        """Write everything added so far into ``folder/filename`` (one shard); the scratch file goes."""
        self._file.close()
        shard = Shard(filename, self.entries)
        writer = ShardWriter(self.folder, [shard], progress)
        try:
            if not self._entries:
                raise OutputError("nothing to write: every tensor was left out")
            mapped = None
            if self._offset:
                with open(self.path, "rb") as f:  # a private mapping: the writer's views need no copy
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            for entry, offset in self._entries:
                if entry.nbytes:
                    flat = torch.frombuffer(mapped, dtype=torch.uint8, count=entry.nbytes, offset=offset)
                else:
                    flat = torch.empty(0, dtype=torch.uint8)
                writer.write(entry.name, flat.view(DTYPES[entry.dtype]).reshape(entry.shape))
            del flat, mapped  # unmapped once the last view is gone
        finally:
            writer.abort()
            self.discard()
        return shard

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
