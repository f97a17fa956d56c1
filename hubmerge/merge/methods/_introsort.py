"""Which elements land in a range of sorted positions, as PyTorch's CPU sort decides it, without sorting.

mergekit picks TIES' top-k with ``torch.argsort(|delta|, descending=True)[:k]`` and Breadcrumbs' window with
``torch.sort(|delta|).indices[lo:hi]``, both on CPU in float32. PyTorch's CPU sort is ``std::sort`` (libstdc++
introsort), which is *not* stable: among equal magnitudes (very common with bf16 deltas) the chosen elements
depend on how introsort partitions the whole array. Sorting 16M elements takes seconds; this module reproduces
the same selection in a few vectorised passes:

1. radix-select the key at each boundary of the range (two 65536-bin histograms of the float bits);
2. if no run of equal keys straddles a boundary the answer is a threshold comparison;
3. otherwise replay introsort's partition steps (median-of-three pivot moved to the front, Hoare partition,
   recursion depth limit ``2*floor(log2 n)``, insertion sort below 17 elements) along the path to each
   straddled boundary only, which costs O(n) instead of O(n log n), and record which of the tied elements
   end up before it.

The emulation is checked once per process against ``torch.sort`` itself; on a platform whose sort differs
(libc++, MSVC, x86-simd-sort builds), when the data contain NaN, or when introsort would fall back to
heapsort, we call ``torch.sort`` on a CPU copy instead, so the result always matches the local CPU sort.
The same selection is made on every device (mergekit on CUDA sorts differently, by a stable radix sort).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["sorted_range_mask"]

_INSERTION_THRESHOLD = 16  # libstdc++ _S_threshold: ranges this small are left to the final insertion sort
_EMULATE_FROM = 1 << 15  # below this many elements a real sort is cheaper than replaying it


class _NeedRealSort(Exception):
    """Raised when the replay cannot vouch for the result (depth limit reached, unexpected state)."""


def sorted_range_mask(tensor: torch.Tensor, start: int, stop: int, *, descending: bool) -> torch.Tensor:
    """Boolean mask (flat) of the elements that mergekit's CPU sort of ``|tensor|`` puts at positions ``[start, stop)``.

    Equal to ``mask[torch.sort(tensor.abs().reshape(-1).float().cpu(), descending=descending).indices[start:stop]] = True``
    with ``start``/``stop`` already clipped to ``0 <= start <= stop <= numel`` (use ``slice.indices``).
    """
    n = tensor.numel()
    device = tensor.device
    if start >= stop:
        return torch.zeros(n, dtype=torch.bool, device=device)
    if start == 0 and stop == n:
        return torch.ones(n, dtype=torch.bool, device=device)
    magnitudes = tensor.abs().reshape(-1).float()  # exactly what mergekit sorts on CPU
    if n < _EMULATE_FROM or not _emulation_matches_torch() or bool(torch.isnan(magnitudes).any()):
        return _mask_by_sort(magnitudes, start, stop, descending)

    # Non-negative floats order like their bit patterns; negate for a descending sort so that we only ever
    # replay an ascending sort on int32 keys. ``magnitudes`` is our own buffer and is consumed here.
    keys = magnitudes.view(torch.int32)
    if descending:
        keys.neg_()
    bounds = [b for b in (start, stop) if 0 < b < n]
    exact_high = tensor.dtype == torch.bfloat16  # bf16 -> f32 leaves the low 16 bits zero
    selected = _select(keys, bounds, exact_high)
    before = {b: keys < selected[b][0] for b in bounds}  # elements strictly before the boundary's key
    straddled = [b for b in bounds if selected[b][1] < b]  # some equal keys lie before b, some after
    if straddled:
        try:
            ties = _replay(keys, straddled, {b: selected[b][0] for b in straddled})
        except _NeedRealSort:
            return _mask_by_sort(tensor.abs().reshape(-1).float(), start, stop, descending)
        for b, found in ties.items():
            if found:
                before[b][torch.cat(found).long()] = True
    keep = before[stop] if stop < n else torch.ones(n, dtype=torch.bool, device=device)
    if start > 0:
        keep &= ~before[start]
    return keep


def _mask_by_sort(magnitudes: torch.Tensor, start: int, stop: int, descending: bool) -> torch.Tensor:
    order = torch.sort(magnitudes.cpu(), descending=descending).indices[start:stop]
    mask = torch.zeros(magnitudes.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.to(magnitudes.device)


def _select(keys: torch.Tensor, ranks: list[int], exact_high: bool) -> dict[int, tuple[int, int]]:
    """For each rank r: (the key at sorted position r, how many keys are strictly smaller)."""
    out: dict[int, tuple[int, int]] = {}
    if not ranks:
        return out
    high = torch.bitwise_right_shift(keys, 16).add_(1 << 15)  # 0..65535, ordered like the keys
    cum = torch.bincount(high, minlength=1 << 16).cumsum(0)
    bins = torch.searchsorted(cum, torch.tensor(ranks, device=keys.device), right=True).tolist()
    for r, b in zip(ranks, bins):
        below = int(cum[b - 1]) if b else 0
        key_high = (b - (1 << 15)) << 16
        if exact_high:
            out[r] = (key_high, below)
            continue
        low = torch.bitwise_and(keys[high == b], 0xFFFF)
        cum_low = torch.bincount(low, minlength=1 << 16).cumsum(0)
        b2 = int(torch.searchsorted(cum_low, torch.tensor(r - below, device=keys.device), right=True))
        out[r] = (key_high + b2, below + (int(cum_low[b2 - 1]) if b2 else 0))
    return out


def _flatnonzero(mask: torch.Tensor) -> torch.Tensor:
    if mask.device.type == "cpu":  # numpy's is ~10x faster than torch.nonzero on CPU
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().view(-1)


def _count(mask: torch.Tensor) -> int:
    return int(mask.count_nonzero())


def _replay(keys: torch.Tensor, bounds: list[int], values: dict[int, int]) -> dict[int, list[torch.Tensor]]:
    """Replay introsort (ascending) on ``keys`` in place, following only the ranges that contain a boundary.

    Returns, for each boundary b, index tensors of the elements equal to ``values[b]`` that end up before b.
    Positions are tracked lazily: the first range is the identity permutation (apart from the pivot swap).
    """
    n = keys.numel()
    device = keys.device
    index_dtype = torch.int32 if n < 2**31 else torch.int64
    ties: dict[int, list[torch.Tensor]] = {b: [] for b in bounds}
    # (offset of the range, its keys, its original indices or None for identity, remaining depth, boundaries)
    stack: list[tuple[int, torch.Tensor, torch.Tensor | None, int, list[int]]] = [
        (0, keys, None, 2 * (n.bit_length() - 1), list(bounds))
    ]
    while stack:
        lo, key, pos, depth, inside = stack.pop()
        size = key.numel()
        if size <= _INSERTION_THRESHOLD:  # the final insertion sort is stable within the range
            if pos is None:
                pos = torch.arange(size, dtype=index_dtype, device=device)
            order = torch.sort(key, stable=True).indices
            sorted_key, sorted_pos = key[order], pos[order]
            for b in inside:
                t = b - lo
                ties[b].append(sorted_pos[:t][sorted_key[:t] == values[b]])
            continue
        if depth == 0:  # introsort would heapsort this range
            raise _NeedRealSort
        depth -= 1

        # __move_median_to_first(first, first + 1, mid, last - 1)
        mid = size // 2
        a, b_, c = key[[1, mid, size - 1]].tolist()
        if a < b_:
            j, pivot = (mid, b_) if b_ < c else ((size - 1, c) if a < c else (1, a))
        elif a < c:
            j, pivot = 1, a
        else:
            j, pivot = (size - 1, c) if b_ < c else (mid, b_)
        key[[0, j]] = key[[j, 0]]
        if pos is not None:
            pos[[0, j]] = pos[[j, 0]]

        # __unguarded_partition(first + 1, last, pivot): the left scan stops at keys >= pivot, the right scan
        # at keys <= pivot (the pivot itself is the sentinel at position 0); the i-th left stop is swapped
        # with the i-th right stop while they have not crossed. The split point ``cut`` is the largest x with
        # #(left stops in [1, x)) <= #(right stops in [x, size)), and it lies in [1 + #less, size - #greater].
        ge = key >= pivot
        le = key <= pivot
        x0, x1 = 1 + size - _count(ge), _count(le)
        cut = x0
        if x1 > x0:
            a0, b0 = _count(ge[1:x0]), _count(le[x0:])
            lefts = torch.zeros(x1 - x0 + 1, dtype=torch.int64, device=device)
            rights = torch.zeros(x1 - x0 + 1, dtype=torch.int64, device=device)
            lefts[1:] = ge[x0:x1].cumsum(0)
            rights[1:] = le[x0:x1].cumsum(0)
            fits = _flatnonzero((a0 + lefts) <= (b0 - rights))
            if not fits.numel():
                raise _NeedRealSort
            cut = x0 + int(fits[-1])
        left_stops = _flatnonzero(ge[1:cut]) + 1  # ascending, all of them are swapped
        right_stops = _flatnonzero(le[cut:]) + cut  # ascending; the one at ``cut`` may stay
        swaps = left_stops.numel()
        if right_stops.numel() == swaps + 1:
            right_stops = right_stops[1:]
        elif right_stops.numel() != swaps:
            raise _NeedRealSort
        del ge, le

        go_left = [b for b in inside if b < lo + cut]
        go_right = [b for b in inside if b > lo + cut]
        record = [b for b in inside if b >= lo + cut and values[b] == pivot]

        def original(idx: torch.Tensor) -> torch.Tensor:
            if pos is not None:
                return pos[idx]
            q = idx.to(index_dtype)
            return torch.where(q == j, 0, q)  # position j holds original element 0 after the pivot swap

        def range_positions(begin: int, end: int) -> torch.Tensor:
            if pos is not None:
                return pos[begin:end]
            q = torch.arange(begin, end, dtype=index_dtype, device=device)
            for at, orig in ((0, j), (j, 0)):
                if begin <= at < end:
                    q[at - begin] = orig
            return q

        # The left range receives the right stops' elements (highest position first) and vice versa.
        into_left_key = key[right_stops].flip(0) if (go_left or record) else None
        into_left_pos = original(right_stops).flip(0) if (go_left or record) else None
        into_right_key = key[left_stops].flip(0) if go_right else None
        into_right_pos = original(left_stops).flip(0) if go_right else None
        for b in record:  # the left range is entirely before b: its elements equal to b's key are ties
            pivot_index = pos[:1].clone() if pos is not None else torch.tensor([j], dtype=index_dtype, device=device)
            ties[b].append(pivot_index)
            ties[b].append(into_left_pos[into_left_key == pivot])
        if go_left:
            key.scatter_(0, left_stops, into_left_key)
            left_pos = range_positions(0, cut)
            left_pos.scatter_(0, left_stops, into_left_pos)
            stack.append((lo, key[:cut], left_pos, depth, go_left))
        if go_right:
            key.scatter_(0, right_stops, into_right_key)
            right_pos = range_positions(cut, size)
            right_pos.scatter_(0, right_stops - cut, into_right_pos)
            stack.append((lo + cut, key[cut:], right_pos, depth, go_right))
    return ties


_MATCHES: bool | None = None


def _emulation_matches_torch() -> bool:
    """Once per process: does the replay reproduce this build's CPU sort (ties, both directions)?"""
    global _MATCHES
    if _MATCHES is None:
        try:
            g = torch.Generator().manual_seed(20240601)
            ok = True
            for levels, n in ((7, 70_001), (3000, 40_000)):
                sample = torch.randint(0, levels, (n,), generator=g).float().mul_(0.125)
                for descending in (True, False):
                    for start, stop in ((0, n // 3), (n // 5, n - n // 7)):
                        ref = torch.zeros(n, dtype=torch.bool)
                        ref[torch.sort(sample, descending=descending).indices[start:stop]] = True
                        keys = sample.clone().view(torch.int32)
                        if descending:
                            keys.neg_()
                        bounds = [b for b in (start, stop) if 0 < b < n]
                        sel = _select(keys, bounds, False)
                        before = {b: keys < sel[b][0] for b in bounds}
                        ties = _replay(keys, [b for b in bounds if sel[b][1] < b], {b: sel[b][0] for b in bounds})
                        for b, found in ties.items():
                            if found:
                                before[b][torch.cat(found).long()] = True
                        got = before[stop] if stop < n else torch.ones(n, dtype=torch.bool)
                        if start > 0:
                            got = got & ~before[start]
                        ok = ok and torch.equal(ref, got)
            _MATCHES = ok
        except _NeedRealSort:
            _MATCHES = False
    return _MATCHES
