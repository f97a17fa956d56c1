"""How many range requests to keep in flight, and how large to make them, measured on the link itself.

A real link caps each connection (a CDN's per-stream limit) well below what the machine can take, and
every request pays a round trip before its first byte. ``sources.remote`` fetches a large range as pieces
on parallel connections; this module decides how many of them run at once across the process and how
big they are, from what finished pieces measured. No torch here: the Hub client sizes its connection
pool from ``MAX_IN_FLIGHT`` without importing the readers.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

MIN_PIECE = 4 * 1024 * 1024  # a range is split into pieces no smaller than this
MAX_PIECE = 16 * 1024 * 1024
PIECE_ROUND_TRIPS = 4  # a piece takes about this many round trips to transfer, so waiting costs ~20% of it
MAX_IN_FLIGHT = 32  # requests in flight across the process, at most


class LinkConcurrency:
    """How many range requests to keep in flight, process-wide, found by hill climbing on throughput.

    Time is cut into epochs of at least ``limit`` finished pieces and ``epoch_seconds``; an epoch's
    throughput is the bytes of the pieces finished in it over its length. Starting from ``initial``, every
    epoch that brought at least ``gain`` more throughput than the settled level raises the limit by half
    (a probe); the first probe that does not pay off goes back to the settled limit, and a new probe is
    made every ``reprobe`` epochs, so the limit follows a link whose capacity changes. Per-connection caps
    make throughput grow with the limit until the aggregate cap is reached; beyond it, extra requests
    only share the same bytes, and the limit stops there instead of opening ever more connections.

    It also keeps what the pieces measured of the link (the fastest time to first byte and recent
    per-stream rates), from which ``piece_size`` makes pieces that amortise the round trip."""

    def __init__(self, *, initial: int = 4, maximum: int = MAX_IN_FLIGHT, epoch_seconds: float = 0.25,
                 gain: float = 1.05, reprobe: int = 8, clock: Callable[[], float] = time.monotonic):
        self.limit = self.settled = initial
        self.maximum = maximum
        self.epoch_seconds, self.gain, self.reprobe = epoch_seconds, gain, reprobe
        self._clock = clock
        self._cond = threading.Condition()
        self._active = 0
        self._settled_rate = 0.0
        self._since_probe = 0
        self._epoch_start: float | None = None
        self._epoch_bytes = 0
        self._epoch_pieces = 0
        self.latency: float | None = None  # fastest time to first byte seen
        self.stream_rate: float | None = None  # recent bytes per second of one stream, once its bytes flow
        self.history: list[tuple[int, float]] = []  # (limit, throughput) per epoch, for logs and tests

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            while self._active >= self.limit:
                self._cond.wait()
            self._active += 1
            if self._epoch_start is None:
                self._epoch_start = self._clock()
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def record(self, nbytes: int, first_byte: float, seconds: float) -> None:
        """A piece finished: ``nbytes`` in ``seconds``, the first of them after ``first_byte`` seconds."""
        with self._cond:
            if first_byte >= 0 and (self.latency is None or first_byte < self.latency):
                self.latency = first_byte
            flowing = seconds - first_byte
            if nbytes >= MIN_PIECE and flowing > 0:
                rate = nbytes / flowing
                self.stream_rate = rate if self.stream_rate is None else 0.7 * self.stream_rate + 0.3 * rate
            self._epoch_bytes += nbytes
            self._epoch_pieces += 1
            now = self._clock()
            elapsed = now - (self._epoch_start if self._epoch_start is not None else now)
            if self._epoch_pieces >= self.limit and elapsed >= self.epoch_seconds:
                self._adapt(self._epoch_bytes / elapsed)
                self._epoch_start = now if self._active else None
                self._epoch_bytes = self._epoch_pieces = 0
            self._cond.notify_all()

    def _adapt(self, rate: float) -> None:
        self.history.append((self.limit, rate))
        if self.limit == self.settled:
            # Settled: track the level, and probe upwards now and then.
            self._settled_rate = rate if not self._settled_rate else 0.5 * self._settled_rate + 0.5 * rate
            self._since_probe += 1
            if (self._since_probe >= self.reprobe or len(self.history) == 1) and self.settled < self.maximum:
                self.limit = min(self.maximum, self.settled + max(1, self.settled // 2))
            return
        if rate >= self.gain * self._settled_rate:  # the probe paid off: settle there and keep climbing
            self.settled, self._settled_rate = self.limit, rate
            self.limit = min(self.maximum, self.limit + max(1, self.limit // 2))
            if self.limit == self.settled:
                self._since_probe = 0
        else:  # no gain: the link is full at the settled level
            self.limit = self.settled
            self._since_probe = 0
        logger.debug("range requests in flight: %d (%.1f MB/s at %d)", self.limit, rate / 1e6, self.history[-1][0])

    def piece_size(self) -> int:
        """Bytes per request: ``PIECE_ROUND_TRIPS`` round trips' worth of one stream, within bounds."""
        if self.latency is None or self.stream_rate is None:
            return MIN_PIECE
        return int(min(MAX_PIECE, max(MIN_PIECE, PIECE_ROUND_TRIPS * self.latency * self.stream_rate)))



LINK = LinkConcurrency()
