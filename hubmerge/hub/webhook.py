"""A small receiver for Hub webhooks: when a tracked upstream gets a new commit, re-merge the targets that
track it (``sync``) or ask GitHub to (``repository_dispatch``).

- The secret (``X-Webhook-Secret``) is compared in constant time: missing -> 401, wrong -> 403.
- New SHAs come from ``updatedRefs[].newSha`` (huggingface_hub's ``WebhookPayload.repo.head_sha`` is always
  empty for real payloads); pull-request refs and repos no target tracks are ignored.
- Bursts are debounced: a target is synced once, ``debounce`` seconds after the last event for it.
- The server faces the internet: the secret is checked from the headers before the body is read, the body
  is bounded (``MAX_BODY``, a Content-Length required) and type-checked (400 otherwise), every read has a
  timeout and every connection a deadline, and a bounded worker pool behind a deep listen backlog answers
  bursts of hundreds of requests without resets.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable

import requests

from hubmerge.errors import HubmergeError

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # Hub payloads are a few KB
MAX_REFS = 1000  # updatedRefs entries looked at
WORKERS = 16  # requests handled at once
QUEUED = 256  # accepted connections waiting for a worker (past that the listen backlog holds them)
LISTEN_BACKLOG = 1024
READ_TIMEOUT = 10.0  # seconds a read may wait for the client
CONNECTION_DEADLINE = 30.0  # seconds a connection may stay open in all
LINGER_SECONDS = 1.0  # after a response, how long what the client still sends is read and dropped
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass
class Event:
    repo: str
    branch: str
    new_sha: str


def _field(obj: dict, key: str, kind: type, where: str):
    value = obj.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise PayloadError(f"{where}{key}: expected {'an object' if kind is dict else 'a list' if kind is list else 'a string'}")
    return value


def parse_events(payload: dict) -> list[Event]:
    """Commits to branches of a model repo; everything else (PR refs, deletions, discussions) is dropped.
    A payload whose fields have the wrong types raises ``PayloadError``."""
    if not isinstance(payload, dict):
        raise PayloadError("the payload is not a JSON object")
    event = _field(payload, "event", dict, "")
    repo = _field(payload, "repo", dict, "")
    scope, kind = _field(event, "scope", str, "event."), _field(repo, "type", str, "repo.") or "model"
    name = _field(repo, "name", str, "repo.")
    refs = _field(payload, "updatedRefs", list, "")
    if len(refs) > MAX_REFS:
        raise PayloadError(f"updatedRefs: more than {MAX_REFS} entries")
    out = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise PayloadError(f"updatedRefs[{i}]: expected an object")
        ref_name, sha = _field(ref, "ref", str, f"updatedRefs[{i}]."), _field(ref, "newSha", str, f"updatedRefs[{i}].")
        if sha and not _SHA.fullmatch(sha):
            raise PayloadError(f"updatedRefs[{i}].newSha: not a commit SHA")
        if ref_name.startswith("refs/heads/") and sha:
            out.append(Event(name, ref_name[len("refs/heads/"):], sha))
    if not scope.startswith("repo.content") or kind != "model":
        return []
    return out


@dataclass
class WebhookReceiver:
    """``targets``: repo id of a merged model -> {upstream repo id: tracked branch}.
    ``trigger``: called with a target repo id (and the events that caused it) after the debounce."""

    secret: str
    targets: Callable[[], dict[str, dict[str, str]]]
    trigger: Callable[[str, list[Event]], None]
    debounce: float = 5.0
    _pending: dict[str, list[Event]] = field(default_factory=dict)
    _timers: dict[str, threading.Timer] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    triggered: list[str] = field(default_factory=list)

    def authorize(self, header: str | None) -> int:
        if not header:
            return 401
        if not hmac.compare_digest(header.encode("utf-8", "replace"), self.secret.encode("utf-8")):
            return 403
        return 200

    def handle(self, payload: dict) -> list[str]:
        """Schedule syncs for the targets tracking the updated refs; returns those targets."""
        events = parse_events(payload)
        if not events:
            return []
        matched: dict[str, list[Event]] = {}
        for target, tracked in self.targets().items():
            for e in events:
                if tracked.get(e.repo) == e.branch:
                    matched.setdefault(target, []).append(e)
        for target, evs in matched.items():
            self._schedule(target, evs)
        return sorted(matched)

    def _schedule(self, target: str, events: list[Event]) -> None:
        with self._lock:
            self._pending.setdefault(target, []).extend(events)
            old = self._timers.pop(target, None)
            if old is not None:
                old.cancel()
            timer = threading.Timer(self.debounce, self._fire, args=(target,))
            timer.daemon = True
            self._timers[target] = timer
            timer.start()

    def _fire(self, target: str) -> None:
        with self._lock:
            events = self._pending.pop(target, [])
            self._timers.pop(target, None)
        self.triggered.append(target)
        try:
            self.trigger(target, events)
        except HubmergeError as exc:
            logger.error("re-merge of %s failed: %s", target, exc)
        except Exception:  # keep serving: one failing target must not stop the receiver
            logger.exception("re-merge of %s failed", target)

    def scheduled(self) -> list[str]:
        """The targets waiting for their debounce to end."""
        with self._lock:
            return sorted(self._timers)

    def flush(self) -> None:
        """Fire every pending target now (tests and shutdown)."""
        with self._lock:
            timers = list(self._timers.items())
        for target, timer in timers:
            timer.cancel()
            self._fire(target)


class PayloadError(HubmergeError):
    """A webhook body that is not a Hub webhook payload (answered with 400)."""


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class WebhookServer(HTTPServer):
    """An HTTP server for untrusted clients: a bounded pool of worker threads, a deep listen backlog, a socket
    timeout for every read and a deadline for every connection, so slow or hostile clients are dropped and a
    burst of hundreds of requests is queued (by the kernel, past ``queued`` accepted ones), not reset."""

    request_queue_size = LISTEN_BACKLOG
    allow_reuse_address = True

    def __init__(self, address, handler, *, workers: int = WORKERS, queued: int = QUEUED,
                 timeout: float = READ_TIMEOUT, deadline: float = CONNECTION_DEADLINE):
        self.read_timeout, self.deadline = timeout, deadline
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="webhook")
        self._slots = threading.BoundedSemaphore(workers + queued)
        self._open: dict[socket.socket, float] = {}
        self._open_lock = threading.Lock()
        self._closing = threading.Event()
        super().__init__(address, handler)
        self._reaper = threading.Thread(target=self._reap, name="webhook-reaper", daemon=True)
        self._reaper.start()

    def process_request(self, request, client_address):
        # Runs on the accepting thread: when every slot is taken, stop accepting; the backlog holds the rest.
        self._slots.acquire()
        try:
            self._pool.submit(self._work, request, client_address)
        except RuntimeError:  # the pool is shut down
            self._slots.release()
            self.shutdown_request(request)

    def _work(self, request, client_address):
        with self._open_lock:
            self._open[request] = time.monotonic() + self.deadline
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)
            self.shutdown_request(request)
            self._slots.release()

    def _reap(self):
        """Cut connections past their deadline (a client trickling bytes never hits the read timeout)."""
        while not self._closing.wait(0.25):
            now = time.monotonic()
            with self._open_lock:
                late = [s for s, deadline in self._open.items() if deadline < now]
                for s in late:
                    self._open.pop(s, None)
            for s in late:
                logger.debug("webhook: dropping a connection open longer than %.0f s", self.deadline)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def shutdown_request(self, request):
        """A lingering close: send FIN, then read (and drop) what the client still sends, briefly, so that a
        client refused before its body was read gets the response instead of a reset."""
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(LINGER_SECONDS)
            end, drained = time.monotonic() + LINGER_SECONDS, 0
            while drained < MAX_BODY and time.monotonic() < end:
                chunk = request.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        self.close_request(request)

    def handle_error(self, request, client_address):  # no traceback on stderr for a client's misbehaviour
        logger.debug("webhook: connection from %s failed", client_address[0], exc_info=True)

    def server_close(self):
        self._closing.set()
        super().server_close()
        with self._open_lock:
            open_now = list(self._open)
        for s in open_now:  # let the workers finish now, not at their deadline
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)


def make_server(receiver: WebhookReceiver, host: str = "127.0.0.1", port: int = 8765, *,
                workers: int = WORKERS, timeout: float = READ_TIMEOUT,
                deadline: float = CONNECTION_DEADLINE) -> WebhookServer:
    """The receiver behind an HTTP server: the secret is checked from the headers before any body byte is
    read; the body must have a Content-Length (411 without one, 400 if it is not a number, 413 past
    ``MAX_BODY``) and arrive within the connection deadline; a body that is not a webhook payload gets 400.
    Every connection is closed after its response."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            self.connection.settimeout(self.server.read_timeout)

        def log_message(self, fmt, *args):  # quiet; never log headers (the secret is one)
            logger.debug("webhook %s", fmt % args)

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.close_connection = True
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _authorize(self) -> bool:
            status = receiver.authorize(self.headers.get("X-Webhook-Secret"))
            if status != 200:
                self._reply(status, {"error": "missing X-Webhook-Secret" if status == 401 else "wrong secret"})
                return False
            return True

        def handle_expect_100(self):  # no "100 Continue" for a client that will be refused anyway
            if not self._authorize():
                return False
            try:
                self._content_length()
            except _Refused as exc:
                self._reply(exc.status, {"error": exc.message})
                return False
            return super().handle_expect_100()

        def _content_length(self) -> int:
            if self.headers.get("Transfer-Encoding"):
                raise _Refused(411, "send the body with a Content-Length (no Transfer-Encoding)")
            values = self.headers.get_all("Content-Length") or []
            if not values:
                raise _Refused(411, "a Content-Length header is required")
            text = values[0].strip()
            if len(set(values)) > 1 or not text.isascii() or not text.isdigit():
                raise _Refused(400, "Content-Length is not a number")
            if len(text) > 12 or int(text) > MAX_BODY:
                raise _Refused(413, f"payload too large (the limit is {MAX_BODY} bytes)")
            return int(text)

        def _body(self, length: int) -> bytes:
            chunks, left = [], length
            while left:
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    raise _Refused(400, "the body ended before Content-Length bytes")
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)

        def do_POST(self):  # noqa: N802 - http.server naming
            if not self._authorize():
                return
            try:
                body = self._body(self._content_length())
                payload = _load_payload(body)
                scheduled = receiver.handle(payload)
            except _Refused as exc:
                self._reply(exc.status, {"error": exc.message})
                return
            except PayloadError as exc:
                self._reply(400, {"error": exc.message})
                return
            except OSError:  # timed out or cut by the deadline: nobody to answer
                self.close_connection = True
                return
            self._reply(202, {"scheduled": scheduled})

        def do_GET(self):  # noqa: N802
            self._reply(200, {"ok": True})

    return WebhookServer((host, port), Handler, workers=workers, timeout=timeout, deadline=deadline)


def _load_payload(body: bytes) -> dict:
    try:
        payload = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise PayloadError("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise PayloadError("the payload is not a JSON object")
    return payload


def github_dispatch(repository: str, token: str, *, api_url: str = "https://api.github.com",
                    session: requests.Session | None = None) -> Callable[[str, list[Event]], None]:
    """A trigger that sends ``repository_dispatch`` (type ``hub-model-updated``) to a GitHub repo."""
    session = session or requests.Session()

    def send(target: str, events: list[Event]) -> None:
        body = {"event_type": "hub-model-updated",
                "client_payload": {"target": target,
                                   "updates": [{"repo": e.repo, "branch": e.branch, "sha": e.new_sha} for e in events]}}
        resp = session.post(f"{api_url.rstrip('/')}/repos/{repository}/dispatches", json=body, timeout=30,
                            headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                                     "X-GitHub-Api-Version": "2022-11-28"})
        if resp.status_code >= 300:
            raise HubmergeError(f"GitHub dispatch to {repository} failed: HTTP {resp.status_code}",
                                hint="the token needs write access to the repository's contents")
        logger.info("dispatched hub-model-updated for %s to %s", target, repository)

    return send
