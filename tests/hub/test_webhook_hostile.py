"""The webhook receiver against hostile and careless clients: the secret is checked before any body byte,
bodies are bounded and type-checked, slow clients are dropped, and a burst of hundreds is answered in full."""

from __future__ import annotations

import json
import logging
import socket
import threading

import pytest

from hubmerge.hub.webhook import MAX_BODY, WebhookReceiver, make_server

SECRET = "s3cret-value"
SHA = "2" * 40
PAYLOAD = {"event": {"action": "update", "scope": "repo.content"}, "repo": {"type": "model", "name": "up/a"},
           "updatedRefs": [{"ref": "refs/heads/main", "oldSha": None, "newSha": SHA}]}
HANG_GUARD = 60  # seconds: only there so a regression fails instead of hanging the suite


@pytest.fixture
def receiver():
    fired = []
    rec = WebhookReceiver(SECRET, lambda: {"me/merged": {"up/a": "main"}}, lambda t, evs: fired.append(t),
                          debounce=3600)
    yield rec
    with rec._lock:
        for timer in rec._timers.values():
            timer.cancel()


def _serve(receiver, **kw):
    server = make_server(receiver, "127.0.0.1", 0, **kw)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def server(receiver):
    server, thread = _serve(receiver, timeout=1.0, deadline=3.0)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(HANG_GUARD)


def _head(*, secret: str | None = SECRET, length: str | None = None, extra: str = "") -> bytes:
    lines = ["POST /webhook HTTP/1.1", "Host: x", "Content-Type: application/json"]
    if secret is not None:
        lines.append(f"X-Webhook-Secret: {secret}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def _exchange(server, data: bytes, *, keep_sending: bytes = b"") -> tuple[int, dict]:
    """Send ``data``, then (optionally) trickle more without ever finishing; return the response."""
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=HANG_GUARD) as s:
        s.sendall(data)
        if keep_sending:
            s.sendall(keep_sending)
        return _read_response(s)


def _read_response(s: socket.socket) -> tuple[int, dict]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without a response (got {buf[:80]!r})")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length:"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, json.loads(body[:length])


def _request(server, payload, *, secret=SECRET) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return _exchange(server, _head(secret=secret, length=str(len(body))) + body)


def test_secret_checked_before_the_body_is_read(server):
    # Content-Length -1 or none, a body that never ends, no (or a wrong) secret: refused from the headers.
    assert _exchange(server, _head(secret=None, length="-1"), keep_sending=b"{" * 1000)[0] == 401
    assert _exchange(server, _head(secret=None), keep_sending=b"x" * 1000)[0] == 401
    assert _exchange(server, _head(secret="wrong", length=str(10 * MAX_BODY)), keep_sending=b"x")[0] == 403


@pytest.mark.parametrize("length, status", [(None, 411), ("-1", 400), ("abc", 400), ("1e3", 400),
                                            ("٣", 400), ("9" * 5000, 413), (str(MAX_BODY + 1), 413)])
def test_content_length_checked(server, length, status):
    got, body = _exchange(server, _head(length=length), keep_sending=b"{}")
    assert got == status and body["error"]


def test_chunked_body_refused(server):
    got, _ = _exchange(server, _head(extra="Transfer-Encoding: chunked\r\n"), keep_sending=b"2\r\n{}\r\n0\r\n\r\n")
    assert got == 411


def test_expect_100_continue_refused_without_secret(server):
    status, _ = _exchange(server, _head(secret=None, length="10", extra="Expect: 100-continue\r\n"))
    assert status == 401
    status, _ = _exchange(server, _head(length="abc", extra="Expect: 100-continue\r\n"))
    assert status == 400


@pytest.mark.parametrize("payload, culprit", [
    ({**PAYLOAD, "event": "repo.content"}, "event"),
    ({**PAYLOAD, "updatedRefs": ["x"]}, "updatedRefs[0]"),
    ({**PAYLOAD, "updatedRefs": {"ref": "refs/heads/main"}}, "updatedRefs"),
    ({**PAYLOAD, "repo": ["up/a"]}, "repo"),
    ({**PAYLOAD, "repo": {"type": "model", "name": 7}}, "repo.name"),
    ({**PAYLOAD, "event": {"scope": ["repo.content"]}}, "event.scope"),
    ({**PAYLOAD, "updatedRefs": [{"ref": "refs/heads/main", "newSha": 12}]}, "newSha"),
    ({**PAYLOAD, "updatedRefs": [{"ref": "refs/heads/main", "newSha": "../../x"}]}, "newSha"),
    ({**PAYLOAD, "updatedRefs": [{"ref": ["refs/heads/main"], "newSha": SHA}]}, "ref"),
    ({**PAYLOAD, "updatedRefs": [{"ref": "refs/heads/main", "newSha": SHA}] * 1001}, "updatedRefs"),
    (["a", "list"], "object"),
    (b"[" * 200_000 + b"]" * 200_000, "JSON"),
    (b'{"event": {"scope": "repo.content"}, "n": ' + b"9" * 5000 + b"}", "JSON"),
    (b"\xff\xfe not json", "JSON"),
    (b"", "object"),
])
def test_malformed_payloads_get_400(server, receiver, caplog, capfd, payload, culprit):
    caplog.set_level(logging.DEBUG, logger="hubmerge")
    if payload == b"":
        status, body = _request(server, b"null")
    else:
        status, body = _request(server, payload)
    assert status == 400 and culprit in body["error"], body
    assert receiver.scheduled() == []
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err + caplog.text


def test_good_payload_still_scheduled(server, receiver):
    status, body = _request(server, PAYLOAD)
    assert (status, body) == (202, {"scheduled": ["me/merged"]})
    assert receiver.scheduled() == ["me/merged"]
    assert _request(server, {**PAYLOAD, "event": {"scope": "discussion"}}) == (202, {"scheduled": []})


def test_short_body_dropped_after_the_timeout(server):
    # Announces 100 bytes, sends 2, then waits: the read times out and the connection is closed.
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=HANG_GUARD) as s:
        s.sendall(_head(length="100") + b"{}")
        assert s.recv(1024) == b""


def test_slowloris_connections_are_closed(receiver):
    """50 clients that send a header line now and then (never idle past the read timeout) are cut at the
    connection deadline; a well-behaved client is answered afterwards."""
    server, thread = _serve(receiver, workers=25, timeout=1.0, deadline=2.0)
    socks = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", server.server_port), timeout=HANG_GUARD)
            s.sendall(b"POST /webhook HTTP/1.1\r\n")
            socks.append(s)
        closed = 0
        stop = threading.Event()

        def trickle(s):
            nonlocal closed
            s.settimeout(0.5)
            while not stop.is_set():
                try:
                    s.sendall(b"X-a: b\r\n")
                    if s.recv(1024) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            else:
                return
            closed += 1

        threads = [threading.Thread(target=trickle, args=(s,)) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG_GUARD)
        stop.set()
        assert closed == 50
        assert _request(server, PAYLOAD)[0] == 202
    finally:
        for s in socks:
            s.close()
        server.shutdown()
        server.server_close()
        thread.join(HANG_GUARD)


def test_hundreds_of_concurrent_requests_all_answered(receiver):
    n = 300
    server, thread = _serve(receiver)
    statuses: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(n)
    body = json.dumps(PAYLOAD).encode()
    bad_secret = json.dumps({"x": 1}).encode()

    def one(i):
        start.wait(HANG_GUARD)
        try:
            if i % 3 == 2:
                got = _exchange(server, _head(secret="wrong", length=str(len(bad_secret))) + bad_secret)[0]
            else:
                got = _exchange(server, _head(length=str(len(body))) + body)[0]
            with lock:
                statuses.append(got)
        except OSError as exc:
            with lock:
                failures.append(repr(exc))

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG_GUARD)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(HANG_GUARD)
    assert failures == []
    assert sorted(statuses) == [202] * 200 + [403] * 100
    assert receiver.scheduled() == ["me/merged"]
