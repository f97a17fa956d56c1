"""Chunk loops spread over threads (``run_spans`` under ``spread_spans``): every span is done exactly once,
the kernels that use it give the same bits however many threads take the spans, and an error in any
thread reaches the caller after all of them have stopped."""

from __future__ import annotations

import threading

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
    assert _chunks.span_workers() == 1  # restored on leaving the block


def test_an_error_in_a_span_reaches_the_caller_after_every_thread_stopped():
    """The calling thread fails its first span while both helpers are inside one of theirs: the error must
    come out only after the helpers finished those spans, and they must stop taking spans."""
    running, order = [], []
    caller = threading.get_ident()
    all_busy = threading.Barrier(3)  # the caller and both helpers, each inside its first span
    failing, returned, let_go = threading.Event(), threading.Event(), threading.Event()

    def body(start, stop, scratch):
        first = threading.get_ident() not in running
        running.append(threading.get_ident())
        if not first:
            return
        all_busy.wait(timeout=30)
        if threading.get_ident() == caller:
            failing.set()
            raise ValueError("bad span")
        let_go.wait(timeout=30)
        order.append("a helper finished its span")

    def release():
        # Holds the helpers until run_spans returned. A correct run_spans waits for them, so it cannot
        # return first: they are let go after a pause instead, and it returns after them.
        failing.wait(timeout=30)
        returned.wait(timeout=0.5)
        let_go.set()

    releaser = threading.Thread(target=release)
    releaser.start()
    with spread_spans(3), pytest.raises(ValueError, match="bad span"):
        run_spans(400, 8, CPU, body)
    order.append("run_spans returned")
    returned.set()
    releaser.join()
    assert len(running) < 50  # the others stopped taking spans once it failed
    assert order == ["a helper finished its span"] * 2 + ["run_spans returned"]  # no helper outlived the call


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


def test_spreading_in_one_thread_leaves_other_threads_alone():
    """A merge in a background thread (a webhook job) must not change how this thread's kernels split work."""
    inside, release = threading.Event(), threading.Event()
    seen = []

    def background():
        with spread_spans(4):
            inside.set()
            release.wait(timeout=30)
            seen.append(_chunks.span_workers())

    thread = threading.Thread(target=background)
    thread.start()
    assert inside.wait(timeout=30)
    try:
        assert _chunks.span_workers() == 1
        threads = set()
        run_spans(1000, 10, CPU, lambda start, stop, scratch: threads.add(threading.get_ident()))
        assert threads == {threading.get_ident()}
    finally:
        release.set()
        thread.join()
    assert seen == [4]
