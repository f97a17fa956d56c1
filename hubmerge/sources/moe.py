"""MoE checkpoints seen as transformers 5 (and mergekit 0.1.5) see them: experts fused on read.

A per-expert checkpoint (``...experts.<e>.gate_proj.weight`` for every expert e) is served as the fused
tensors of its family's layout (``...experts.gate_up_proj`` [E, 2I, H], ``...experts.down_proj``), so
every merge method sees the same tensor mergekit's does: SLERP's angle and TIES' top-k run over all
experts at once, and a filter such as ``mlp`` matches Mixtral's renamed ``block_sparse_moe`` tensors.
Fused inputs pass through, so fused and per-expert models merge together.

The view is planned from the headers alone (names, shapes, dtypes, checked here) and stays streaming:
reading a fused tensor reads each expert's piece by range into one buffer of the fused size. Families
whose layout mergekit keeps per expert (``layout = "checkpoint"``) get the opposite: a fused input is
split into per-expert tensors, each a slice of the fused one. The rules are data, in ``moe_layouts``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
from dataclasses import dataclass

import torch

from hubmerge.errors import SourceError
from hubmerge.sources.moe_layouts import ExpertStack, MoeLayout, layout_for
from hubmerge.sources.readers import POOL, TensorReader, tensor_from_bytes
from hubmerge.sources.safetensors_format import ITEM_SIZES, TensorInfo

logger = logging.getLogger(__name__)

_EXPERT_RE = re.compile(r"^(?P<prefix>.+)\.(?P<index>\d+)\.(?P<part>.+)$")
MAX_EXPERTS = 65536  # bounds what a crafted header can make us plan


@dataclass(frozen=True)
class Piece:
    """``length`` bytes at ``offset`` into the data of input tensor ``info``."""

    info: TensorInfo
    offset: int
    length: int


@dataclass(frozen=True)
class AssembledTensorInfo(TensorInfo):
    """A tensor of the view, made of byte ranges of input tensors laid end to end.

    ``file``/``start``/``end`` are those of the first piece, widened to the tensor's size (only sizes and
    messages use them); ``pieces`` say where the bytes come from."""

    pieces: tuple[Piece, ...] = ()


def _assembled(name: str, dtype: str, shape: tuple[int, ...], pieces: list[Piece]) -> AssembledTensorInfo:
    first = pieces[0].info
    nbytes = math.prod(shape) * ITEM_SIZES[dtype]
    start = first.start + pieces[0].offset
    return AssembledTensorInfo(name, first.file, dtype, shape, start, start + nbytes, tuple(pieces))


def rename(name: str, layout: MoeLayout) -> str:
    for old, new in layout.renames:
        if old in name:
            name = name.replace(old, new, 1)
    return name


def pieces_of(info: TensorInfo) -> tuple[Piece, ...]:
    """Where a tensor's bytes come from: its pieces, or the whole of itself."""
    return info.pieces if isinstance(info, AssembledTensorInfo) else (Piece(info, 0, info.nbytes),)


def _slice_pieces(pieces: tuple[Piece, ...], offset: int, length: int) -> list[Piece]:
    """The pieces covering bytes [offset, offset + length) of a tensor made of ``pieces``."""
    out, at = [], 0
    for p in pieces:
        lo, hi = max(offset, at), min(offset + length, at + p.length)
        if lo < hi:
            out.append(Piece(p.info, p.offset + lo - at, hi - lo))
        at += p.length
    return out


def plan_view(tensors: dict[str, TensorInfo], layout: MoeLayout, *, model: str) -> dict[str, TensorInfo]:
    """The tensor table of ``tensors`` in ``layout``: renamed, experts fused (or split), checked."""
    renamed: dict[str, TensorInfo] = {}
    for name, info in tensors.items():
        new = rename(name, layout)
        if new in renamed:
            raise SourceError(f"{model}: tensors '{renamed[new].name}' and '{name}' are both '{new}' in the "
                              f"{layout.name} layout", hint="the checkpoint mixes two namings of the same tensor")
        # A renamed tensor keeps its own name towards the model's reader (which may look it up by name).
        renamed[new] = info if new == name else _assembled(new, info.dtype, info.shape, list(pieces_of(info)))
    if not layout.stacks:
        return renamed
    if layout.layout == "fused":
        return _fuse(renamed, layout, model)
    return _split(renamed, layout, model)


def _container_of(prefix: str, layout: MoeLayout) -> bool:
    return prefix == layout.container or prefix.endswith("." + layout.container)


def _fuse(tensors: dict[str, TensorInfo], layout: MoeLayout, model: str) -> dict[str, TensorInfo]:
    by_part = {part: stack for stack in layout.stacks for part in stack.parts}
    groups: dict[tuple[str, ExpertStack], dict[int, dict[str, TensorInfo]]] = {}
    out: dict[str, TensorInfo] = {}
    for name, info in tensors.items():
        match = _EXPERT_RE.match(name)
        stack = by_part.get(match["part"]) if match and _container_of(match["prefix"], layout) else None
        if stack is None:
            out[name] = info
            continue
        experts = groups.setdefault((match["prefix"], stack), {})
        experts.setdefault(int(match["index"]), {})[match["part"]] = info
    for (prefix, stack), experts in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1].fused)):
        fused = f"{prefix}.{stack.fused}"
        if fused in out:
            raise SourceError(f"{model}: has both the fused '{checkpoint_name(out[fused])}' and per-expert tensors "
                              f"of it ('{prefix}.<e>.{stack.parts[0]}')", hint="the checkpoint mixes the two MoE layouts")
        out[fused] = _fused_info(fused, prefix, stack, experts, model)
    return out


def checkpoint_name(info: TensorInfo) -> str:
    """The name a tensor of the view has in the checkpoint (what a user finds in its index)."""
    return info.pieces[0].info.name if isinstance(info, AssembledTensorInfo) and len(info.pieces) == 1 else info.name


def _fused_info(fused: str, prefix: str, stack: ExpertStack, experts: dict[int, dict[str, TensorInfo]],
                model: str) -> AssembledTensorInfo:
    count = max(experts) + 1
    if count > MAX_EXPERTS:
        raise SourceError(f"{model}: '{prefix}.{count - 1}' is past the limit of {MAX_EXPERTS} experts")
    # Errors name tensors as the checkpoint does (before renames such as Mixtral's block_sparse_moe -> mlp).
    sample_part, sample = next(iter(experts[min(experts)].items()))
    sample_name = checkpoint_name(sample)
    on_disk = sample_name[:len(sample_name) - len(f".{min(experts)}.{sample_part}")]

    def disk_name(e: int, part: str) -> str:
        return f"{on_disk}.{e}.{part}"

    pieces: list[Piece] = []
    rows = 0
    for e in range(count):
        for part in stack.parts:
            info = experts.get(e, {}).get(part)
            if info is None:
                raise SourceError(f"{model}: tensor '{disk_name(e, part)}' is missing, but other experts of "
                                  f"'{on_disk}' have it", hint="the checkpoint is incomplete; download it again")
            if info.dtype != sample.dtype or len(info.shape) < 1 or info.shape[1:] != sample.shape[1:]:
                raise SourceError(f"{model}: tensor '{disk_name(e, part)}' is {info.dtype} {list(info.shape)}, which "
                                  f"does not stack with '{sample_name}' ({sample.dtype} {list(sample.shape)})",
                                  hint="every expert must have the same shapes and dtype")
            if e == 0:
                rows += info.shape[0]
            pieces.extend(pieces_of(info))
    for e in range(1, count):
        for part in stack.parts:
            if experts[e][part].shape != experts[0][part].shape:
                raise SourceError(f"{model}: tensor '{disk_name(e, part)}' has shape {list(experts[e][part].shape)}, "
                                  f"expert 0's has {list(experts[0][part].shape)}",
                                  hint="every expert must have the same shapes and dtype")
    return _assembled(fused, sample.dtype, (count, rows, *sample.shape[1:]), pieces)


def _split(tensors: dict[str, TensorInfo], layout: MoeLayout, model: str) -> dict[str, TensorInfo]:
    by_fused = {stack.fused: stack for stack in layout.stacks}
    out: dict[str, TensorInfo] = {}
    for name, info in tensors.items():
        prefix, _, last = name.rpartition(".")
        stack = by_fused.get(last) if _container_of(prefix, layout) else None
        if stack is None:
            out[name] = info
            continue
        if len(info.shape) < 2 or info.shape[1] % len(stack.parts) or info.shape[0] > MAX_EXPERTS:
            raise SourceError(f"{model}: fused tensor '{name}' has shape {list(info.shape)}, which does not split "
                              f"into {len(stack.parts)} part(s) per expert", hint="the checkpoint is corrupt")
        count, rows = info.shape[0], info.shape[1] // len(stack.parts)
        part_shape = (rows, *info.shape[2:])
        part_bytes = math.prod(part_shape) * ITEM_SIZES[info.dtype]
        for e in range(count):
            for k, part in enumerate(stack.parts):
                piece_name = f"{prefix}.{e}.{part}"
                if piece_name in tensors:
                    raise SourceError(f"{model}: has both the fused '{name}' and the per-expert '{piece_name}'",
                                      hint="the checkpoint mixes the two MoE layouts")
                offset = (e * len(stack.parts) + k) * part_bytes
                out[piece_name] = _assembled(piece_name, info.dtype, part_shape,
                                             _slice_pieces(pieces_of(info), offset, part_bytes))
    return out


class AssemblingReader:
    """Serves a view's tensors: assembled ones from their pieces, the others straight from the model."""

    def __init__(self, inner: TensorReader):
        self.inner = inner

    @property
    def root(self):  # the model's folder, where the card looks for its README
        return getattr(self.inner, "root", None)

    def expect(self, infos: list[TensorInfo]) -> None:
        expect = getattr(self.inner, "expect", None)
        if expect is not None:
            expect([p.info for i in infos for p in pieces_of(i)])

    def read(self, info: TensorInfo) -> torch.Tensor:
        if not isinstance(info, AssembledTensorInfo):
            return self.inner.read(info)
        whole = info.pieces[0]
        if len(info.pieces) == 1 and whole.offset == 0 and whole.length == whole.info.nbytes:
            return self.inner.read(whole.info).view(info.shape)  # renamed only
        buf = POOL.take(info.nbytes)
        at = 0
        for piece in info.pieces:
            part = self.inner.read(piece.info)
            flat = part.reshape(-1).view(torch.uint8)
            buf[at:at + piece.length].copy_(flat[piece.offset:piece.offset + piece.length])
            at += piece.length
            del flat
            POOL.give(part)
        return tensor_from_bytes(buf, info)

    def close(self) -> None:
        self.inner.close()


def view_identity(tensors: dict[str, TensorInfo]) -> str:
    """Where the view's assembled tensors come from, for a resumable merge's fingerprint."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        info = tensors[name]
        if isinstance(info, AssembledTensorInfo):
            for p in info.pieces:
                h.update(f"{name}<{p.info.name}:{p.info.file}:{p.info.start}:{p.offset}:{p.length}\n".encode())
    return h.hexdigest()


def expert_view(source):
    """``source`` (a ModelSource) in its family's MoE layout; itself when nothing changes."""
    layout = layout_for(source.config)
    if layout is None:
        return source
    tensors = plan_view(source.tensors, layout, model=source.name)
    if tensors.keys() == source.tensors.keys():
        return source
    assembled = sum(isinstance(i, AssembledTensorInfo) for i in tensors.values())
    logger.info("%s: %d tensors seen in the %s layout (%d assembled from per-expert pieces)", source.name,
                len(tensors), layout.name, assembled)
    return dataclasses.replace(source, tensors=tensors, reader=AssemblingReader(source.reader),
                               extra={**source.extra, "moe": view_identity(tensors)})
