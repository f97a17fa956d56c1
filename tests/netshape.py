"""A network's shape for the test Hub: latency per request and bandwidth caps, per connection and in aggregate.

Loopback moves gigabytes a second with no delay, so a client that would stall on a real runner looks fast
here. ``Link`` makes the test Hub answer like a link with a round-trip time and a CDN that caps each
connection and the whole machine:

* every response waits one ``latency`` before its first byte (the request's round trip), and a new
  connection waits one more before its first request is read (the TCP handshake);
* response bodies (downloads) are paced by a per-connection cap and by an aggregate cap shared by all
  connections; request bodies (uploads) by an aggregate upload cap.

Pacing uses virtual finish times: a chunk of ``n`` bytes reserves ``n / rate`` seconds on each bucket it
crosses and is written when the later reservation ends, so no connection and no sum of connections ever
exceeds its cap, and a cap is used in full when enough connections want it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

CHUNK = 128 * 1024  # bytes written per paced step: small enough for smooth rates, large enough to be cheap


@dataclass(frozen=True)
class LinkProfile:
    """What a client sees of the network. Rates in bytes per second; ``None`` means uncapped."""

    name: str
    latency: float = 0.0  # seconds before each response's first byte
    per_connection: float | None = None  # download cap of one connection (a CDN's per-stream limit)
    aggregate: float | None = None  # download cap of all connections together (the runner's link)
    upload: float | None = None  # upload cap of all connections together

    def describe(self) -> str:
        def rate(value: float | None) -> str:
            return "uncapped" if value is None else f"{value / 1e6:g} MB/s"

        return (f"{self.name}: {self.latency * 1000:g} ms, {rate(self.per_connection)} per connection, "
                f"{rate(self.aggregate)} aggregate, {rate(self.upload)} upload")


class Bucket:
    """A rate as a virtual clock: ``reserve(n)`` books the next ``n / rate`` seconds and returns when they end.

    A booking may start up to ``burst`` bytes' worth of time in the past (a token bucket of that depth),
    so a sender that woke a little late from its sleep catches up instead of losing the time for good."""

    def __init__(self, rate: float | None, burst: int = CHUNK):
        self.rate = rate
        self.burst = burst
        self._free_at = float("-inf")
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, now: float) -> float:
        if self.rate is None:
            return now
        with self._lock:
            start = max(now - self.burst / self.rate, self._free_at)
            self._free_at = start + nbytes / self.rate
            return self._free_at


class Link:
    """The shared state of one shaped network: the aggregate buckets and the profile."""

    def __init__(self, profile: LinkProfile, *, wait: Callable[[float], object] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.profile = profile
        self.down = Bucket(profile.aggregate)
        self.up = Bucket(profile.upload)
        self._wait = wait or time.sleep  # the server passes its stop event's wait, so stop() wakes pacers
        self._clock = clock

    def connection(self) -> "ConnectionPacer":
        return ConnectionPacer(self)

    def sleep_until(self, deadline: float) -> None:
        delay = deadline - self._clock()
        if delay > 0:
            self._wait(delay)

    def round_trip(self) -> None:
        if self.profile.latency > 0:
            self._wait(self.profile.latency)


class ConnectionPacer:
    """Paces one connection's reads and writes against its own cap and the link's aggregate ones."""

    def __init__(self, link: Link):
        self.link = link
        self.down = Bucket(link.profile.per_connection)

    def write(self, send: Callable[[memoryview], object], data: memoryview) -> None:
        """Send ``data`` through ``send`` in paced chunks."""
        link = self.link
        for offset in range(0, len(data), CHUNK):
            chunk = data[offset:offset + CHUNK]
            now = link._clock()
            link.sleep_until(max(self.down.reserve(len(chunk), now), link.down.reserve(len(chunk), now)))
            send(chunk)

    def read(self, receive: Callable[[int], bytes], length: int) -> bytes:
        """Read ``length`` bytes through ``receive`` in chunks paced by the upload cap."""
        link = self.link
        parts = []
        remaining = length
        while remaining > 0:
            part = receive(min(CHUNK, remaining))
            if not part:
                break
            parts.append(part)
            remaining -= len(part)
            link.sleep_until(link.up.reserve(len(part), link._clock()))
        return b"".join(parts)
