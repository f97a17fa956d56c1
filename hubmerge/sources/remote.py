"""Tensors straight from the Hub with HTTP range requests.

Only the bytes of the tensors a merge needs cross the network: headers are read with two exact ranges,
neighbouring tensors are fetched in one request, a reply must be 206 with the Content-Range asked for,
and a transfer that breaks resumes where it stopped.

A real link caps each connection (a CDN's per-stream limit) well below what the machine can take, and
every request pays a round trip before its first byte. So a large range is fetched as several pieces on
parallel connections, each piece big enough to amortise its round trip, and the number of requests in
flight across the process (``LINK``) is found by measurement: it grows while more requests bring more
throughput and settles where they stop doing so (see ``LinkConcurrency``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import requests
import torch
import urllib3

from hubmerge.errors import HubError, SourceError
from hubmerge.sources.link import LINK, MAX_IN_FLIGHT, LinkConcurrency
from hubmerge.sources.readers import tensor_from_bytes
from hubmerge.sources.safetensors_format import SafetensorsHeader, TensorInfo, header_length, parse_header

logger = logging.getLogger(__name__)

RETRY_STATUSES = {429, 500, 502, 503, 504}
MAX_GAP = 4096  # bytes of unneeded data we accept between two tensors fetched in one request
# Neighbours share one request up to this size; a larger tensor is a window of its own, fetched in
# parallel pieces. Small, so that a window's buffer (alive until its last tensor is merged) costs little.
MAX_WINDOW = 16 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_PIECES = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="hubmerge-range")


@dataclass
class RangeFetcher:
    """Ranged GETs with retries and resume. ``headers`` carries the token for the Hub's own origin;
    requests drops it on redirects to another host (the CDN), as it must."""

    session: requests.Session
    headers: dict[str, str]
    retries: int = 5
    backoff: float = 0.5
    timeout: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    link: LinkConcurrency = field(default_factory=lambda: LINK)
    # Where each file URL redirected to (the Hub sends LFS files to its CDN): later ranges go there
    # directly, a round trip less each. A target that stops answering is forgotten and re-resolved.
    _targets: dict[str, str] = field(default_factory=dict)

    def fetch(self, url: str, start: int, end: int, *, what: str) -> bytearray:
        """Bytes [start, end) of ``url``: one request, or pieces on parallel connections for a large range."""
        out = bytearray(end - start)
        view = memoryview(out)
        piece = self.link.piece_size()
        if len(out) < 2 * piece:
            self._fetch_into(url, start, view, what=what)
            return out
        bounds = list(range(0, len(out), piece))
        if len(out) - bounds[-1] < piece // 2:
            bounds.pop()  # no tiny last piece: the one before takes it
        spans = list(zip(bounds, bounds[1:] + [len(out)]))
        futures = [_PIECES.submit(self._fetch_into, url, start + a, view[a:b], what=what) for a, b in spans]
        done, _ = wait_for(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            for f in futures:
                f.cancel()
            wait_for(futures)  # no piece may still write into the buffer once we raise
        for f in futures:
            f.result()  # the first failure, if any
        return out

    def _fetch_into(self, url: str, start: int, out: memoryview, *, what: str) -> None:
        """Fill ``out`` with the bytes of ``url`` from ``start``, retrying and resuming where a transfer broke."""
        with self.link.slot():
            began = time.monotonic()
            first_byte = self._fetch_range(url, start, out, what=what) - began
            self.link.record(len(out), first_byte, time.monotonic() - began)

    def _fetch_range(self, url: str, start: int, out: memoryview, *, what: str) -> float:
        """The loop behind ``_fetch_into``; returns when the last successful response's headers arrived."""
        end = start + len(out)
        got = 0
        attempt = 0
        answered = time.monotonic()
        while got < len(out):
            first = start + got
            target = self._targets.get(url)
            try:
                resp = self.session.get(target or url, headers={
                    **(self.headers if target is None else self._headers_for(target, url)),
                    "Range": f"bytes={first}-{end - 1}", "Accept-Encoding": "identity"},
                    stream=True, timeout=self.timeout, allow_redirects=True)
            except requests.RequestException as exc:
                attempt = self._retry_or_raise(attempt, f"{what}: {type(exc).__name__}", None)
                continue
            try:
                if target is not None and resp.status_code in (401, 403, 404, 410):
                    self._targets.pop(url, None)  # a signed CDN URL expired: ask the Hub again
                    continue
                if target is None and resp.history and resp.status_code == 206:
                    self._targets[url] = resp.url
                if resp.status_code in RETRY_STATUSES:
                    attempt = self._retry_or_raise(attempt, f"{what}: HTTP {resp.status_code}", resp)
                    continue
                self._check_status(resp, what)
                self._check_content_range(resp, first, end - 1, what)
                answered = time.monotonic()
                try:
                    # raw.read hands over what arrived before a connection broke, so a retry resumes
                    # exactly there (iter_content would drop the partial chunk).
                    while got < len(out):
                        chunk = resp.raw.read(min(1 << 20, len(out) - got), decode_content=False)
                        if not chunk:
                            break
                        out[got:got + len(chunk)] = chunk
                        got += len(chunk)
                        with self._lock:
                            self.bytes_received += len(chunk)
                except (requests.RequestException, ConnectionError, urllib3.exceptions.HTTPError) as exc:
                    # The body broke mid-way: the next request resumes at ``got``.
                    attempt = self._retry_or_raise(attempt, f"{what}: transfer interrupted ({type(exc).__name__})",
                                                   None)
                    continue
                if got < len(out):
                    attempt = self._retry_or_raise(attempt, f"{what}: short read", None)
            finally:
                resp.close()
        return answered

    def _headers_for(self, target: str, url: str) -> dict[str, str]:
        """The token goes to the Hub's own origin only, never to the CDN a file redirected to."""
        if urlsplit(target).netloc == urlsplit(url).netloc:
            return self.headers
        return {k: v for k, v in self.headers.items() if k.lower() != "authorization"}

    def _retry_or_raise(self, attempt: int, why: str, resp: requests.Response | None) -> int:
        if attempt >= self.retries:
            if resp is not None and resp.status_code == 429:
                wait = resp.headers.get("Retry-After", "a while")
                raise HubError(f"rate limited by the Hub ({why}); retry after {wait} seconds",
                               hint="pass a token (HF_TOKEN): anonymous limits are shared per IP",
                               kind=HubError.RATE_LIMITED)
            raise HubError(f"giving up after {attempt + 1} attempts: {why}",
                           hint="check the network; behind a proxy, set HF_HUB_DISABLE_XET=1", kind=HubError.UNREACHABLE)
        delay = self.backoff * (2 ** attempt)
        if resp is not None:
            delay = max(delay, _retry_after(resp))
        logger.info("%s; retrying in %.1f s", why, delay)
        self.sleep(min(delay, 60.0))
        return attempt + 1

    @staticmethod
    def _check_status(resp: requests.Response, what: str) -> None:
        if resp.status_code == 206:
            return
        if resp.status_code == 200:
            raise HubError(f"{what}: the server ignored the Range header and sent the whole file",
                           hint="the endpoint (HF_ENDPOINT) does not support range requests; use --download")
        if resp.status_code in (401, 403):
            raise HubError(f"{what}: access denied (HTTP {resp.status_code})",
                           hint="the repo is gated or private: accept its terms on the Hub and pass a token",
                           kind=HubError.AUTH)
        if resp.status_code == 404:
            raise HubError(f"{what}: not found on the Hub (HTTP 404)", kind=HubError.NOT_FOUND, missing="file")
        if resp.status_code == 416:
            raise HubError(f"{what}: requested range lies outside the file (HTTP 416)",
                           hint="the file changed since it was resolved")
        raise HubError(f"{what}: unexpected HTTP {resp.status_code}")

    @staticmethod
    def _check_content_range(resp: requests.Response, first: int, last: int, what: str) -> None:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != first or int(match.group(2)) != last:
            raise HubError(f"{what}: the server answered a different range "
                           f"({resp.headers.get('Content-Range')!r} for bytes={first}-{last})")


def _retry_after(resp: requests.Response) -> float:
    value = resp.headers.get("Retry-After")
    if value:
        try:
            return float(value)
        except ValueError:
            pass
    match = re.search(r"t=(\d+)", resp.headers.get("RateLimit", ""))
    return float(match.group(1)) if match else 0.0


def read_remote_header(fetcher: RangeFetcher, url: str, *, file: str, file_size: int, display: str) -> SafetensorsHeader:
    prefix = bytes(fetcher.fetch(url, 0, min(8, file_size), what=f"{display} (header length)")) if file_size else b""
    n = header_length(prefix, file=display, file_size=file_size)
    raw = bytes(fetcher.fetch(url, 8, 8 + n, what=f"{display} (header)")) if n else b""
    return parse_header(raw, file=file, file_size=file_size, display=display)


@dataclass
class _Window:
    file: str
    start: int
    end: int
    members: set[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    data: bytearray | None = None


class RemoteReader:
    """A TensorReader over HTTP. Given the order reads will come in (``expect``), it coalesces
    neighbouring tensors of a file into one request and hands each tensor out once."""

    row_blocks = True  # a block of rows not announced by ``expect`` is fetched on its own

    def __init__(self, fetcher: RangeFetcher, urls: dict[str, str], display: str):
        self.fetcher = fetcher
        self.urls = urls  # file -> URL pinned to a commit SHA
        self.display = display
        self._windows: dict[str, _Window] = {}

    def expect(self, infos: list[TensorInfo]) -> None:
        self._windows.clear()
        current: _Window | None = None
        for info in infos:
            if info.name in self._windows:
                continue  # read twice (a repeated layer): the first window serves it, later reads refetch
            if (current is not None and info.file == current.file and 0 <= info.start - current.end <= MAX_GAP
                    and info.end - current.start <= MAX_WINDOW):
                current.end = info.end
                current.members.add(info.name)
            else:
                current = _Window(info.file, info.start, info.end, {info.name})
            self._windows[info.name] = current

    def read(self, info: TensorInfo) -> torch.Tensor:
        window = self._windows.get(info.name)
        if window is None or info.name not in window.members:
            data = self.fetcher.fetch(self.urls[info.file], info.start, info.end,
                                      what=f"{self.display}/{info.file} ('{info.name}')")
            return tensor_from_bytes(torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8), info)
        with window.lock:
            if window.data is None:
                window.data = self.fetcher.fetch(self.urls[info.file], window.start, window.end,
                                                 what=f"{self.display}/{info.file} ('{info.name}')")
            data = window.data
            window.members.discard(info.name)
            if not window.members:
                window.data = None  # every member handed out: the buffer lives on in their views only
        return _member(data, info.start - window.start, info)

    def close(self) -> None:
        self._windows.clear()


def _member(data: bytearray, offset: int, info: TensorInfo) -> torch.Tensor:
    """One tensor of a window's buffer: a view (no copy), so the buffer goes when its last tensor does.
    The view has the tensor's own dtype, so the read pool never mistakes it for a buffer of its own."""
    if info.numel == 0:
        return torch.empty(info.shape, dtype=info.torch_dtype)
    if offset % info.torch_dtype.itemsize:
        buf = torch.frombuffer(bytearray(data[offset:offset + info.nbytes]), dtype=torch.uint8)
        return tensor_from_bytes(buf, info)  # misaligned in the file: copied out instead
    return torch.frombuffer(data, dtype=info.torch_dtype, count=info.numel, offset=offset).view(info.shape)


def check_size(info_size: int | None, display: str) -> int:
    if info_size is None or info_size < 0:
        raise SourceError(f"{display}: the Hub did not report the file size")
    return info_size
