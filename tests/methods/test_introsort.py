"""The sort-free selection must pick exactly what torch's CPU sort (mergekit's argsort) picks, ties included."""

from __future__ import annotations

import random
import sys

import pytest
import torch

from hubmerge.merge.methods import _introsort
from hubmerge.merge.methods._introsort import sorted_range_mask


def reference(x: torch.Tensor, start: int, stop: int, descending: bool) -> torch.Tensor:
    """What mergekit does: sort |x| in float32 on CPU and take a slice of the order."""
    order = torch.argsort(x.abs().reshape(-1).float(), descending=descending)
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[order[start:stop]] = True
    return mask


@pytest.fixture
def always_replay(monkeypatch):
    monkeypatch.setattr(_introsort, "_EMULATE_FROM", 0)


@pytest.mark.skipif(sys.platform != "linux", reason="the replay targets libstdc++'s std::sort")
def test_self_check_recognises_this_torch_build():
    assert _introsort._emulation_matches_torch()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_random_small_cases_match_torch_sort(always_replay, dtype):
    rng = random.Random(str(dtype))
    gen = torch.Generator().manual_seed(1)
    for _ in range(120):
        n = rng.choice([1, 2, 15, 16, 17, 18, 40, 257, 1000, 3000])
        levels = rng.choice([1, 2, 7, 60, 10**6])
        x = (torch.randint(-levels, levels + 1, (n,), generator=gen).double() * 0.013).to(dtype)
        shape_kind = rng.random()
        if shape_kind < 0.15:
            x = x.abs().sort().values  # already sorted
        elif shape_kind < 0.3:
            x = x.abs().sort(descending=True).values
        a = rng.randint(0, n)
        b = rng.randint(a, n)
        if rng.random() < 0.4:
            a = 0
        for descending in (True, False):
            got = sorted_range_mask(x, a, b, descending=descending)
            assert torch.equal(got, reference(x, a, b, descending)), (n, levels, a, b, descending)


@pytest.mark.parametrize("chunk", [None, 4099], ids=["one-chunk", "chunked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_large_tensor_with_heavy_ties(dtype, chunk, monkeypatch):
    if chunk is not None:  # index arrays and swaps done in many chunks (an odd size: ragged last chunks)
        monkeypatch.setattr(_introsort, "_CHUNK", chunk)
        monkeypatch.setattr(_introsort, "_SWAP_CHUNK", chunk // 3)
    replays = []
    real_replay = _introsort._replay

    def spy(*args, **kwargs):
        replays.append(args[1])
        return real_replay(*args, **kwargs)

    monkeypatch.setattr(_introsort, "_replay", spy)
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(512, 1024, generator=gen).to(dtype)
    other = (base.float() + 0.01 * torch.randn(512, 1024, generator=gen)).to(dtype)
    delta = other - base  # bf16: few distinct magnitudes, long runs of ties
    if dtype == torch.float32:
        delta = torch.round(delta * 2**12) / 2**12
    n = delta.numel()
    for start, stop, descending in ((0, n // 2, True), (0, 1, True), (0, n - 1, True), (n // 10, n - n // 3, False)):
        assert torch.equal(sorted_range_mask(delta, start, stop, descending=descending),
                           reference(delta, start, stop, descending))
    assert replays  # the ties straddled a boundary: the introsort replay did the work, not torch.sort


def test_nan_and_small_inputs_use_torch_sort():
    x = torch.randn(70_000)
    x[::7] = float("nan")
    assert torch.equal(sorted_range_mask(x, 0, 30_000, descending=True), reference(x, 0, 30_000, True))
    y = torch.tensor([3.0, -3.0, 1.0, 3.0])
    assert torch.equal(sorted_range_mask(y, 0, 2, descending=True), reference(y, 0, 2, True))


def test_depth_limit_falls_back_to_torch_sort(monkeypatch):
    # seeded: with some draws the boundary lands exactly on the first cut and nothing is left to recurse into
    keys = torch.randint(0, 5, (5000,), dtype=torch.int32, generator=torch.Generator().manual_seed(5))
    with pytest.raises(_introsort._NeedRealSort):
        _introsort._replay(keys.clone(), [2500], {2500: 2}, depth=1)

    def exhausted(*args, **kwargs):
        raise _introsort._NeedRealSort

    monkeypatch.setattr(_introsort, "_replay", exhausted)
    x = torch.randint(-3, 4, (100_000,)).float()
    assert torch.equal(sorted_range_mask(x, 0, 40_000, descending=True), reference(x, 0, 40_000, True))


def test_trivial_ranges():
    x = torch.randn(100)
    assert not sorted_range_mask(x, 5, 5, descending=True).any()
    assert sorted_range_mask(x, 0, 100, descending=False).all()
