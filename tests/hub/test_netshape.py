"""The test Hub's network shaping (tests/netshape.py) honours its latency and caps, within 10%.

Benchmarks lean on it (benchmarks/bench_hub.py): a cap that leaked would flatter every client.
Each check times a transfer whose shaped duration is a few tenths of a second, far above loopback's own.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from hubserver import HubServer
from netshape import Bucket, LinkProfile

TOKEN = "hf_shape_0123456789abcdefghijklmnopqrstu"
MB = 1_000_000


@pytest.fixture(scope="module")
def shaped():
    server = HubServer(token=TOKEN).start()
    server.create_repo("shape/blob")
    payload = bytes(range(256)) * (3 * MB // 256 + 1)
    sha = server.commit_files("shape/blob", {"data.bin": payload[: 3 * MB], "small.txt": b"x" * 100})
    yield server, sha
    server.stop()


def _url(server: HubServer, sha: str, path: str) -> str:
    return f"{server.url}/shape/blob/resolve/{sha}/{path}"


def _within(measured: float, expected: float, tolerance: float = 0.10) -> bool:
    return abs(measured - expected) <= tolerance * expected


def test_each_request_waits_one_round_trip_and_a_new_connection_one_more(shaped):
    server, sha = shaped

    def five_requests() -> float:
        with requests.Session() as session:
            started = time.monotonic()
            for _ in range(5):
                assert session.get(_url(server, sha, "small.txt")).content == b"x" * 100
            return time.monotonic() - started

    unshaped = five_requests()  # the server's own time per request, measured alongside
    server.shape(LinkProfile("rtt", latency=0.1))
    try:
        elapsed = five_requests()
    finally:
        server.shape(None)
    # 5 round trips + 1 handshake: one connection, kept alive
    assert _within(elapsed - unshaped, 6 * 0.1), (elapsed, unshaped)


def test_one_connection_is_held_to_its_cap(shaped):
    server, sha = shaped
    server.shape(LinkProfile("per-connection", per_connection=6 * MB))
    try:
        started = time.monotonic()
        body = requests.get(_url(server, sha, "data.bin")).content
        elapsed = time.monotonic() - started
    finally:
        server.shape(None)
    assert len(body) == 3 * MB
    assert _within(elapsed, 3 * MB / (6 * MB)), elapsed


def test_connections_together_are_held_to_the_aggregate_cap(shaped):
    server, sha = shaped
    # Four connections of 8 MB/s each could move 32 MB/s; the link's 12 MB/s is the limit.
    server.shape(LinkProfile("aggregate", per_connection=8 * MB, aggregate=12 * MB))
    quarter = 3 * MB // 4
    sizes: list[int] = []

    def fetch(i: int) -> None:
        headers = {"Range": f"bytes={i * quarter}-{(i + 1) * quarter - 1}"}
        sizes.append(len(requests.get(_url(server, sha, "data.bin"), headers=headers).content))

    try:
        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(4)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        server.shape(None)
    assert sizes == [quarter] * 4
    assert _within(elapsed, 3 * MB / (12 * MB)), elapsed


def test_uploads_are_held_to_the_upload_cap(shaped):
    server, _ = shaped
    server.shape(LinkProfile("upload", upload=6 * MB))
    try:
        started = time.monotonic()
        # Any route reads its body first; validate-yaml answers quickly whatever it is sent.
        resp = requests.post(f"{server.url}/api/validate-yaml", data=b"a: 1\n" * (3 * MB // 5),
                             headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        elapsed = time.monotonic() - started
    finally:
        server.shape(None)
    assert resp.status_code < 500
    assert _within(elapsed, 3 * MB / (6 * MB)), elapsed


def test_bucket_never_books_more_than_its_rate():
    bucket = Bucket(1000.0, burst=200)
    # The first booking may use the burst (200 bytes = 0.2 s); the next ones queue up behind each other.
    assert [bucket.reserve(500, 10.0) for _ in range(3)] == pytest.approx([10.3, 10.8, 11.3])
    assert bucket.reserve(100, 20.0) == pytest.approx(19.9)  # an idle bucket starts afresh, burst included
    assert Bucket(None).reserve(10**9, 3.0) == 3.0
