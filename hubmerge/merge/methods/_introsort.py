"""Which elements land in a range of sorted positions, as PyTorch's CPU sort decides it, without sorting.

mergekit picks TIES' top-k with ``torch.argsort(|delta|, descending=True)[:k]`` and Breadcrumbs' window with
``torch.sort(|delta|).indices[lo:hi]``, both on CPU in float32. PyTorch's CPU sort is ``std::sort`` (libstdc++
introsort), which is *not* stable: among equal magnitudes (very common with bf16 deltas) the chosen elements
depend on how introsort partitions the whole array. Sorting 16M elements takes seconds; this module reproduces
the same selection in a few vectorised passes:

1. radix-select the key at each boundary of the range (histograms of the magnitudes' bit patterns);
2. if no run of equal keys straddles a boundary the answer is a threshold comparison;
3. otherwise replay introsort's partition steps (median-of-three pivot moved to the front, Hoare partition,
   recursion depth limit ``2*floor(log2 n)``, insertion sort below 17 elements) along the path to each
   straddled boundary only, which costs O(n) instead of O(n log n), and record which of the tied elements
   end up before it.

The emulation is checked once per process against ``torch.sort`` itself; on a platform whose sort differs
(libc++, MSVC, x86-simd-sort builds), when the data contain NaN, or when introsort would fall back to
heapsort, we call ``torch.sort`` on a CPU copy instead, so the result always matches the local CPU sort.
The same selection is made on every device (mergekit itself sorts differently on CUDA).
"""

from __future__ import annotations

import numpy as np
import torch

from hubmerge.merge.methods._chunks import spans

__all__ = ["sorted_range_mask"]

_INSERTION_THRESHOLD = 16  # libstdc++ _S_threshold: ranges this small are left to the final insertion sort
_EMULATE_FROM = 1 << 15  # below this many elements a real sort is cheaper than replaying it


class _NeedRealSort(Exception):
    """Raised when the replay cannot vouch for the result (depth limit reached, unexpected state)."""


def sorted_range_mask(tensor: torch.Tensor, start: int, stop: int, *, descending: bool) -> torch.Tensor:
    """Boolean mask (flat) of the elements that mergekit's CPU sort of ``|tensor|`` puts at positions ``[start, stop)``.

    Equal to ``mask[order[start:stop]] = True`` with
    ``order = torch.sort(tensor.abs().reshape(-1).float().cpu(), descending=descending).indices`` and
    ``start``/``stop`` already clipped to ``0 <= start <= stop <= numel`` (use ``slice.indices``).
    """
    n = tensor.numel()
    device = tensor.device
    if start >= stop:
        return torch.zeros(n, dtype=torch.bool, device=device)
    if start == 0 and stop == n:
        return torch.ones(n, dtype=torch.bool, device=device)
    if n < _EMULATE_FROM or not _emulation_matches_torch():
        return _mask_by_sort(tensor, start, stop, descending)
    keys = _keys(tensor, descending)
    if keys is None:  # NaN: torch orders NaN specially, leave it to torch
        return _mask_by_sort(tensor, start, stop, descending)
    bounds = [b for b in (start, stop) if 0 < b < n]
    selected = _select(keys, bounds)
    straddled = [b for b in bounds if selected[b][1] < b]  # some equal keys lie before b, some after
    if straddled:
        # The elements strictly before each boundary's key, kept a bit per element through the replay (its
        # costliest part), then the tied elements that the replay puts before the boundary.
        packed = {b: _packed_less(keys, selected[b][0]) for b in bounds}
        try:
            ties = _replay(keys.cpu(), straddled, {b: selected[b][0] for b in straddled})
        except _NeedRealSort:
            return _mask_by_sort(tensor, start, stop, descending)
        before = {b: _unpacked(packed.pop(b), n, device) for b in bounds}
        for b, found in ties.items():
            _mark(before[b], found)
    else:
        before = {b: _less(keys, selected[b][0]) for b in bounds}
    keep = before[stop] if stop < n else torch.ones(n, dtype=torch.bool, device=device)
    if start > 0:
        keep &= ~before[start]
    return keep


def _packed_less(keys: torch.Tensor, value: int) -> np.ndarray | torch.Tensor:
    """``keys < value`` packed 8 flags a byte, computed a chunk at a time (a plain mask off the CPU)."""
    if keys.device.type != "cpu":
        return keys < value
    step = max(8, _CHUNK // 8 * 8)
    flat = keys.numpy()
    out = np.empty((len(flat) + 7) // 8, dtype=np.uint8)
    for a, b in spans(len(flat), step):
        out[a // 8:(b + 7) // 8] = np.packbits(flat[a:b] < value)
    return out


def _less(keys: torch.Tensor, value: int) -> torch.Tensor:
    """``keys < value`` (numpy's comparison on the CPU: several times faster than torch's on small integers)."""
    if keys.device.type != "cpu":
        return keys < value
    return torch.from_numpy(keys.numpy() < value)


def _unpacked(packed: np.ndarray | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(packed, torch.Tensor):
        return packed
    return torch.from_numpy(np.unpackbits(packed, count=n)).view(torch.bool).to(device)


def _keys(tensor: torch.Tensor, descending: bool) -> torch.Tensor | None:
    """Non-negative integer keys that sort (ascending) like mergekit's float32 magnitudes (descending if asked).

    Non-negative floats order like their bit patterns; bf16/fp16 magnitudes convert to float32 exactly, so their
    own 16-bit patterns serve (half the memory traffic); float64 is rounded to float32 first, as mergekit does.
    XOR with the all-ones pattern reverses the order. Our own buffer; None if there is a NaN.
    """
    if tensor.dtype in (torch.bfloat16, torch.float16):
        keys = tensor.abs().reshape(-1).view(torch.int16)
        inf_bits, ones = (0x7F80 if tensor.dtype == torch.bfloat16 else 0x7C00), 0x7FFF
    else:
        magnitudes = tensor.abs().reshape(-1).float()
        if magnitudes.data_ptr() == tensor.data_ptr():
            magnitudes = magnitudes.clone()
        keys = magnitudes.view(torch.int32)
        inf_bits, ones = 0x7F800000, 0x7FFFFFFF
    if int(keys.max()) > inf_bits:
        return None
    return keys.bitwise_xor_(ones) if descending else keys


def _mask_by_sort(tensor: torch.Tensor, start: int, stop: int, descending: bool) -> torch.Tensor:
    magnitudes = tensor.abs().reshape(-1).float().cpu()
    order = torch.sort(magnitudes, descending=descending).indices[start:stop]
    mask = torch.zeros(magnitudes.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.to(tensor.device)


def _select(keys: torch.Tensor, ranks: list[int]) -> dict[int, tuple[int, int]]:
    """For each rank r: (the key at sorted position r, how many keys are strictly smaller).

    Radix select on the non-negative keys: a histogram of the high 15 bits (the whole key for 16-bit keys),
    then, for int32 keys, of the low 16 bits within the bin.
    """
    out: dict[int, tuple[int, int]] = {}
    if not ranks:
        return out
    wide = keys.dtype == torch.int32
    high = torch.bitwise_right_shift(keys, 16) if wide else keys
    cum = torch.bincount(high, minlength=1 << 15).cumsum(0)
    bins = torch.searchsorted(cum, torch.tensor(ranks, device=keys.device), right=True).tolist()
    for r, b in zip(ranks, bins):
        below = int(cum[b - 1]) if b else 0
        if not wide:
            out[r] = (b, below)
            continue
        low = torch.bitwise_and(keys[high == b], 0xFFFF)
        cum_low = torch.bincount(low, minlength=1 << 16).cumsum(0)
        b2 = int(torch.searchsorted(cum_low, torch.tensor(r - below, device=keys.device), right=True))
        out[r] = ((b << 16) + b2, below + (int(cum_low[b2 - 1]) if b2 else 0))
    return out


_CHUNK = 1 << 22  # elements per step where a whole-range temporary would be large
_SWAP_CHUNK = 1 << 20  # pairs swapped per step: each step makes ~ten temporaries of this many elements

# The replay runs on the host in numpy, whatever the tensor's device: its many passes over shrinking ranges
# are comparisons, counts and index lists, which numpy does ~10x faster than torch's CPU kernels on small
# integers (an int16 ``>=`` over 885K keys: 55 us against 535 us; counting the hits: 40 us against 216 us),
# and on a GPU every level would otherwise wait for a device-to-host copy of its counts.


def _median_of_three(key: np.ndarray) -> tuple[int, int]:
    """libstdc++ __move_median_to_first(first, first + 1, mid, last - 1): (position moved to the front, its key)."""
    size = len(key)
    mid = size // 2
    a, b, c = int(key[1]), int(key[mid]), int(key[size - 1])
    if a < b:
        if b < c:
            return mid, b
        return (size - 1, c) if a < c else (1, a)
    if a < c:
        return 1, a
    return (size - 1, c) if b < c else (mid, b)


def _split(key: np.ndarray, pivot: int) -> tuple[int, np.ndarray, np.ndarray]:
    """libstdc++ __unguarded_partition(first + 1, last, pivot at first), as index sets.

    The left scan stops at keys >= pivot, the right scan at keys <= pivot; the i-th left stop is swapped with the
    i-th right stop while they have not crossed. Returns ``cut`` (where the right range starts), the swapped left
    stops (absolute, ascending) and the swapped right stops (relative to ``cut``, ascending; they pair in
    reverse). ``cut`` is the largest x with #(left stops in [1, x)) <= #(right stops in [x, size)); it lies in
    [1 + #less, #less-or-equal].
    """
    size = len(key)
    # The left stops are the keys >= pivot (the pivot itself, at 0, is not scanned), the right stops the keys
    # <= pivot. Counted and listed a chunk at a time from the keys: no full-size masks.
    ge_before = _counter(key, np.greater_equal, pivot, exclude_first=True)
    le_from = _counter(key, np.less_equal, pivot)
    x0, x1 = size - ge_before(size), le_from(0)
    cut = x0
    if x1 > x0:
        # With every key either >= or <= the pivot, #(left stops in [x0, x0+j)) + #(right stops in there) is j
        # plus the number of keys equal to the pivot in there; find the largest j with A(x0+j) <= B(x0+j).
        # The candidates lie between consecutive keys equal to the pivot; there can be millions (heavy ties),
        # so they are scanned a chunk at a time.
        budget = le_from(x0) - ge_before(x0)
        equal = _where(key, np.equal, pivot, x0, x1, offset=0)
        m, best = len(equal), -1
        for a, b in spans(m + 1, _CHUNK):
            count = np.arange(a, b, dtype=np.int64)
            upper = equal[a:min(b, m)].astype(np.int64)
            lower = equal[max(a - 1, 0):b - 1].astype(np.int64) + 1
            if b == m + 1:
                upper = np.append(upper, x1 - x0)
            if a == 0:
                lower = np.insert(lower, 0, 0)
            fits = np.minimum(upper, budget - count)
            fits = fits[fits >= lower]
            if len(fits):
                best = max(best, int(fits.max()))
        if best < 0:
            raise _NeedRealSort
        cut = x0 + best
    left = _where(key, np.greater_equal, pivot, 1, cut, offset=1)
    right = _where(key, np.less_equal, pivot, cut, size, offset=0)
    if len(right) == len(left) + 1:  # the key at ``cut`` equals the pivot and stays where it is
        right = right[1:]
    elif len(right) != len(left):
        raise _NeedRealSort
    return cut, left, right


def _counter(key: np.ndarray, compare, pivot: int, *, exclude_first: bool = False):
    """A function of x counting ``compare(key, pivot)``: over ``key[:x]`` leaving position 0 out if
    ``exclude_first`` (the left scan's stops), else over ``key[x:]`` (the right scan's). Per-chunk counts are
    taken once; a query only recounts the chunk that x falls in."""
    size = len(key)
    bounds = list(spans(size, _CHUNK))
    counts = [int(np.count_nonzero(compare(key[a:b], pivot))) for a, b in bounds]
    first = 1 if exclude_first and size and compare(key[0], pivot) else 0
    total = sum(counts)

    def prefix(x: int) -> int:  # how many in key[:x]
        done = 0
        for (a, b), c in zip(bounds, counts):
            if b <= x:
                done += c
            else:
                if a < x:
                    done += int(np.count_nonzero(compare(key[a:x], pivot)))
                break
        return done

    if exclude_first:
        return lambda x: prefix(x) - (first if x > 0 else 0)
    return lambda x: total - prefix(x)


def _where(key: np.ndarray, compare, pivot: int, start: int, stop: int, *, offset: int) -> np.ndarray:
    """``offset`` + the indices i with ``compare(key[start + i], pivot)``, i in ``[0, stop - start)``, ascending.

    A chunk at a time into one int32 array (int64 past 2^31): counted first, then filled, so neither a
    full-size mask nor a second copy of the indices ever exists."""
    chunks = list(spans(stop - start, _CHUNK))
    if len(chunks) == 1:  # the common case: one mask, no counting pass
        hits = np.flatnonzero(compare(key[start:stop], pivot))
        return np.add(hits, offset, dtype=np.int32 if stop + offset < 2**31 else np.int64)
    counts = [int(np.count_nonzero(compare(key[start + a:start + b], pivot))) for a, b in chunks]
    out = np.empty(sum(counts), dtype=np.int32 if stop + offset < 2**31 else np.int64)
    filled = 0
    for (a, b), c in zip(chunks, counts):
        if c:
            hits = np.flatnonzero(compare(key[start + a:start + b], pivot))
            np.add(hits, a + offset, out=out[filled:filled + c], casting="unsafe")
            filled += c
    return out


def _replay(
    keys: torch.Tensor | np.ndarray, bounds: list[int], values: dict[int, int], depth: int | None = None
) -> dict[int, list[np.ndarray]]:
    """Replay introsort (ascending) on ``keys`` (a CPU tensor or an array) in place, following only the ranges
    that contain a boundary.

    Returns, for each boundary b, index arrays of the elements equal to ``values[b]`` that end up before b.
    ``depth`` overrides introsort's recursion limit ``2 * floor(log2 n)`` (for tests).
    """
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy()
    n = len(keys)
    index_dtype = np.int32 if n < 2**31 else np.int64
    ties: dict[int, list[np.ndarray]] = {b: [] for b in bounds}
    if depth is None:
        depth = 2 * (n.bit_length() - 1)
    # (offset of the range, its keys, their original indices, remaining depth, boundaries inside). The first
    # range's original indices are its positions, so they are not stored (``None``): the full-size index
    # array would be the largest temporary of the replay, and the first split only follows one side.
    stack: list[tuple[int, np.ndarray, np.ndarray | None, int, list[int]]] = [(0, keys, None, depth, list(bounds))]
    while stack:
        lo, key, pos, depth, inside = stack.pop()
        size = len(key)
        if size <= _INSERTION_THRESHOLD:  # the final insertion sort is stable within the range
            if pos is None:
                pos = np.arange(lo, lo + size, dtype=index_dtype)
            order = np.argsort(key, kind="stable")
            sorted_key, sorted_pos = key[order], pos[order]
            for b in inside:
                t = b - lo
                ties[b].append(sorted_pos[:t][sorted_key[:t] == values[b]])
            continue
        if depth == 0:  # introsort would heapsort this range
            raise _NeedRealSort
        depth -= 1
        j, pivot = _median_of_three(key)
        key[0], key[j] = key[j], key[0]
        if pos is not None:
            pos[0], pos[j] = pos[j], pos[0]

        def original(local: np.ndarray) -> np.ndarray:
            """Original indices of the range's elements at ``local`` positions, as they are after the pivot swap."""
            if pos is not None:
                return pos.take(local)
            out = local.astype(index_dtype) + lo
            out[local == 0], out[local == j] = lo + j, lo
            return out

        cut, left, right = _split(key, pivot)

        go_left = [b for b in inside if b < lo + cut]
        go_right = [b for b in inside if b > lo + cut]
        record = [b for b in inside if b >= lo + cut and values[b] == pivot]
        key_r = key[cut:]
        if pos is not None:
            pos_l, pos_r = pos[:cut], pos[cut:]
        else:  # only the sides followed get their index arrays, made here: positions, but for the pivot swap
            pos_l = pos_r = None
            if go_left:
                pos_l = np.arange(lo, lo + cut, dtype=index_dtype)
                pos_l[0] = lo + j
                if j < cut:
                    pos_l[j] = lo
            if go_right:
                pos_r = np.arange(lo + cut, lo + size, dtype=index_dtype)
                if j >= cut:
                    pos_r[j - cut] = lo
        for b in record:  # the left range is entirely before b: its elements equal to b's key are ties
            ties[b].append(original(np.zeros(1, dtype=np.int64)))
        # The i-th left stop swaps with the i-th right stop from the end. The pairs are disjoint, so they are
        # swapped a chunk of pairs at a time (temporaries a chunk in size, not a quarter of the tensor).
        pairs = len(left)
        for a, b in spans(pairs, _SWAP_CHUNK):
            to_left, to_right = left[a:b], right[pairs - b:pairs - a][::-1]
            if go_left or record:  # what the left range receives
                in_key, in_pos = key_r.take(to_right), original(to_right + cut)
            if go_right:
                out_key, out_pos = key.take(to_left), original(to_left)
            for bound in record:
                ties[bound].append(in_pos[in_key == pivot])
            if go_left:
                key[to_left], pos_l[to_left] = in_key, in_pos
            if go_right:
                key_r[to_right], pos_r[to_right] = out_key, out_pos
        del left, right
        if go_left:
            stack.append((lo, key[:cut], pos_l, depth, go_left))
        if go_right:
            stack.append((lo + cut, key_r, pos_r, depth, go_right))
    return ties


def _mark(before: torch.Tensor, found: list[np.ndarray]) -> None:
    """Set ``before`` (a flat mask, any device) at the indices the replay found."""
    if found:
        index = torch.from_numpy(np.concatenate(found).astype(np.int64, copy=False))
        before[index.to(before.device)] = True


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
                        keys = _keys(sample, descending)
                        bounds = [b for b in (start, stop) if 0 < b < n]
                        sel = _select(keys, bounds)
                        before = {b: _less(keys, sel[b][0]) for b in bounds}
                        ties = _replay(keys, [b for b in bounds if sel[b][1] < b], {b: sel[b][0] for b in bounds})
                        for b, found in ties.items():
                            _mark(before[b], found)
                        got = before[stop] if stop < n else torch.ones(n, dtype=torch.bool)
                        if start > 0:
                            got = got & ~before[start]
                        ok = ok and torch.equal(ref, got)
            _MATCHES = ok
        except _NeedRealSort:
            _MATCHES = False
    return _MATCHES
