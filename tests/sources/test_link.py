"""LinkConcurrency: how many range requests go out at once, found by measuring the link (sources/link.py).

A simulated link (per-stream cap, aggregate cap, round trip) with a fake clock: the controller must climb
while more requests bring more throughput, stop near where the aggregate cap is reached, and never pass
its maximum or let more requests run than its limit.
"""

from __future__ import annotations

import threading

import pytest

from hubmerge.sources.link import MAX_PIECE, MIN_PIECE, LinkConcurrency

MB = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(per_stream: float, aggregate: float, latency: float, *, rounds: int = 80,
             piece: int = 8 * MB) -> tuple[LinkConcurrency, float]:
    """Rounds of ``limit`` pieces started together; each takes a round trip plus its share of the link.
    Returns the controller and the link's throughput at the limit it ended on."""
    clock = FakeClock()
    link = LinkConcurrency(clock=clock, epoch_seconds=0.0)

    def duration(k: int) -> float:
        return latency + piece / min(per_stream, aggregate / k)

    for _ in range(rounds):
        k = link.limit
        slots = [link.slot() for _ in range(k)]
        for s in slots:
            s.__enter__()
        clock.now += duration(k)
        for s in slots:
            link.record(piece, latency, duration(k))
            s.__exit__(None, None, None)
    k = link.settled
    return link, k * piece / duration(k)


@pytest.mark.parametrize("per_stream, aggregate, latency", [
    (50 * MB, 400 * MB, 0.040),  # a CDN's per-stream cap under a fast runner link
    (20 * MB, 160 * MB, 0.100),  # far away, slow streams
    (200 * MB, 400 * MB, 0.005),  # close by
])
def test_settles_where_the_aggregate_cap_is_reached(per_stream, aggregate, latency):
    link, throughput = simulate(per_stream, aggregate, latency)
    needed = aggregate / per_stream  # streams that fill the link, were there no round trips
    assert needed <= link.settled <= 3 * needed + 2, link.history
    assert throughput >= 0.78 * aggregate, (throughput, link.history)
    assert max(limit for limit, _ in link.history) < link.maximum  # it did not just open everything


def test_an_uncapped_link_climbs_to_the_maximum():
    link, _ = simulate(50 * MB, 10**12, 0.02)
    assert link.settled == link.maximum


def test_piece_size_amortises_the_round_trip():
    link = LinkConcurrency()
    assert link.piece_size() == MIN_PIECE  # nothing measured yet
    link.record(8 * MB, 0.040, 0.040 + 8 * MB / (50 * MB))
    assert link.latency == pytest.approx(0.040) and link.stream_rate == pytest.approx(50 * MB)
    assert link.piece_size() == pytest.approx(4 * 0.040 * 50 * MB, rel=0.01)  # four round trips of a stream
    fast = LinkConcurrency()
    fast.record(8 * MB, 0.0001, 0.0001 + 8 * MB / (2000 * MB))
    assert fast.piece_size() == MIN_PIECE
    slow_far = LinkConcurrency()
    slow_far.record(8 * MB, 0.5, 0.5 + 8 * MB / (100 * MB))
    assert slow_far.piece_size() == MAX_PIECE


def test_no_more_requests_run_than_the_limit():
    link = LinkConcurrency(initial=2)
    inside = threading.Semaphore(0)
    release = threading.Event()
    running = []
    lock = threading.Lock()
    peak = [0]

    def worker() -> None:
        with link.slot():
            with lock:
                running.append(1)
                peak[0] = max(peak[0], len(running))
            inside.release()
            release.wait(10)
            with lock:
                running.pop()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    assert inside.acquire(timeout=10) and inside.acquire(timeout=10)
    assert not inside.acquire(timeout=0.3)  # the third waits for a slot
    release.set()
    assert inside.acquire(timeout=10)
    for t in threads:
        t.join(10)
    assert peak[0] == 2
