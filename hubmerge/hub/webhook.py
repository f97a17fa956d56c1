"""A small receiver for Hub webhooks: when a tracked upstream gets a new commit, re-merge the targets that
track it (``sync``) or ask GitHub to (``repository_dispatch``).

- The secret (``X-Webhook-Secret``) is compared in constant time: missing -> 401, wrong -> 403.
- New SHAs come from ``updatedRefs[].newSha`` (huggingface_hub's ``WebhookPayload.repo.head_sha`` is always
  empty for real payloads); pull-request refs and repos no target tracks are ignored.
- Bursts are debounced: a target is synced once, ``debounce`` seconds after the last event for it.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import requests

from hubmerge.errors import HubmergeError

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024


@dataclass
class Event:
    repo: str
    branch: str
    new_sha: str


def parse_events(payload: dict) -> list[Event]:
    """Commits to branches of a model repo; everything else (PR refs, deletions, discussions) is dropped."""
    event = payload.get("event") or {}
    repo = payload.get("repo") or {}
    if not str(event.get("scope", "")).startswith("repo.content") or repo.get("type", "model") != "model":
        return []
    out = []
    for ref in payload.get("updatedRefs") or []:
        name, sha = ref.get("ref") or "", ref.get("newSha")
        if name.startswith("refs/heads/") and sha:
            out.append(Event(repo.get("name", ""), name[len("refs/heads/"):], sha))
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


def make_server(receiver: WebhookReceiver, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet; never log headers (the secret is one)
            logger.debug("webhook %s", fmt % args)

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 - http.server naming
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, {"error": "payload too large"})
                return
            body = self.rfile.read(length) if length else b""
            status = receiver.authorize(self.headers.get("X-Webhook-Secret"))
            if status != 200:
                self._reply(status, {"error": "missing X-Webhook-Secret" if status == 401 else "wrong secret"})
                return
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                self._reply(400, {"error": "body is not JSON"})
                return
            scheduled = receiver.handle(payload if isinstance(payload, dict) else {})
            self._reply(202, {"scheduled": scheduled})

        def do_GET(self):  # noqa: N802
            self._reply(200, {"ok": True})

    return ThreadingHTTPServer((host, port), Handler)


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
