"""Chunk loops spread over threads (``run_spans`` under ``spread_spans``): every span is done exactly once,
the kernels that use it give the same bits however many threads take the spans, and an error in any
thread reaches the caller after all of them have stopped."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from hubmerge.merge.methods import _chunks
from hubmerge.merge.methods import linear as linear_module
from hubmerge.merge.methods import task_arithmetic as ta
from hubmerge.merge.methods._chunks import run_spans, spread_spans

CPU = torch.device("cpu")


def _inputs(count: int, n: int, seed: int, dtype=torch.bfloat16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen).to(dtype) for _ in range(count)]


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_every_span_once_and_scratch_made_once_per_thread(workers):
    seen: list[tuple[int, int]] = []
    owners: dict[int, int] = {}
    lock = threading.Lock()

    def body(start, stop, scratch):
        scratch.setdefault("thread", threading.get_ident())
        with lock:
            seen.append((start, stop))
            owners[id(scratch)] = scratch["thread"]
        assert scratch["thread"] == threading.get_ident()

    with spread_spans(workers):
        run_spans(1000, 64, CPU, body, dict)
    assert sorted(seen) == [(s, min(s + 64, 1000)) for s in range(0, 1000, 64)]
    assert len(owners) <= workers and len(set(owners.values())) == len(owners)
    assert _chunks._workers == 1  # restored on leaving the block


def test_an_error_in_a_span_reaches_the_caller_after_every_thread_stopped():
    running = []

    def body(start, stop, scratch):
        running.append(threading.get_ident())
        if start == 3 * 8:
            raise ValueError("bad span")

    with spread_spans(3), pytest.raises(ValueError, match="bad span"):
        run_spans(400, 8, CPU, body)
    assert len(running) < 50  # the others stopped taking spans once it failed
    done = len(running)
    time.sleep(0.05)
    assert len(running) == done  # no helper still at work after the call returned


@pytest.mark.parametrize("workers", [2, 3])
def test_linear_same_bits_spread_over_threads(monkeypatch, workers):
    monkeypatch.setattr(linear_module, "_CHUNK", 1000)  # many spans, the last one short
    xs = _inputs(3, 25_017, seed=1)
    alone = linear_module.linear(None, xs, weights=[0.5, 0.3, 0.2])
    with spread_spans(workers):
        spread = linear_module.linear(None, xs, weights=[0.5, 0.3, 0.2])
    assert torch.equal(alone.view(torch.int16), spread.view(torch.int16))
    # and against an independent computation: float32 weighted sum over the float32 weight total
    expected = sum(w * x.float() for w, x in zip([0.5, 0.3, 0.2], xs)) / torch.tensor(1.0)
    assert torch.allclose(spread.float(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_task_arithmetic_family_same_bits_spread_over_threads(monkeypatch, method):
    monkeypatch.setattr(ta, "_CHUNK", 1000)
    base, *others = _inputs(3, 30_001, seed=2)
    kwargs = dict(weights=[0.7, 0.4])
    if method == "ties":
        kwargs["densities"] = [0.5, 0.6]
    func = getattr(ta, method)
    alone = func(base, list(others), **kwargs)
    with spread_spans(3):
        spread = func(base, list(others), **kwargs)
    assert torch.equal(alone.view(torch.int16), spread.view(torch.int16))
    if method == "task_arithmetic":
        expected = base.float() + sum(w * (x.float() - base.float()) for w, x in zip([0.7, 0.4], others))
        assert torch.allclose(spread.float(), expected, atol=3e-2, rtol=1e-2)
