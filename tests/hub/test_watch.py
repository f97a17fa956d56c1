"""check / sync / webhook against the loopback Hub: stale detection, one re-merge commit, debounced webhooks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import yaml
from helpers import family, publish_family, run_cli

from hubmerge.errors import HubError
from hubmerge.hub import Hub
from hubmerge.hub.recipes import recorded_recipe
from hubmerge.hub.watch import check, tracked_refs
from hubmerge.hub.webhook import WebhookReceiver, make_server, parse_events
from hubmerge.pipeline.push import push
from hubmerge.pipeline.sync import sync
from hubmerge.spec import parse_spec


@pytest.fixture(scope="module")
def local_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam")
    family(root)  # base, chat, math, code
    return root


def _client(hub):
    return Hub(endpoint=hub.url, use_cache=False, retry_backoff=0.01)


@pytest.fixture
def merged(hub, repo_id_factory, local_family):
    """Upstreams base (pinned at its current SHA), chat and math (tracking main), merged into a target."""
    ups = publish_family(hub, repo_id_factory, local_family)
    target = repo_id_factory()
    base_sha = hub.head(ups["base"])
    spec = parse_spec(f"""
merge_method: ties
base_model: {ups['base']}@{base_sha}
models:
  - model: {ups['chat']}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {ups['math']}@main
    parameters: {{weight: 0.5, density: 0.5}}
dtype: bfloat16
hubmerge: {{target: {target}}}
""")
    push(spec, hub=_client(hub), show_progress=False)
    return target, ups


def _new_upstream_commit(hub, repo, local_family, name="code"):
    return hub.commit_files(repo, {"model.safetensors": (local_family / name / "model.safetensors").read_bytes()},
                            message="new weights")


def test_check_up_to_date_then_stale(hub, merged, local_family):
    target, ups = merged
    report = check(_client(hub), target)
    assert not report.stale
    kinds = {s.source: s.tracks for s in report.sources}
    assert kinds == {ups["base"]: None, ups["chat"]: "main", ups["math"]: "main"}
    hub.clear_log()
    new = _new_upstream_commit(hub, ups["chat"], local_family)
    proc = run_cli("check", target, "--json", env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 10, proc.stderr
    doc = json.loads(proc.stdout)
    row = next(s for s in doc["sources"] if s["source"] == ups["chat"])
    assert doc["stale"] and row["changed"] and row["current"] == new
    # a moved *pinned* source does not count
    _new_upstream_commit(hub, ups["base"], local_family)
    again = check(_client(hub), target)
    assert [s.source for s in again.sources if s.changed] == [ups["chat"]]


def test_check_uses_resolver_heads_not_api_calls(hub, merged):
    target, ups = merged
    hub.clear_log()
    check(_client(hub), target)
    upstream_calls = [r for r in hub.requests() if r.path.startswith("/api/") and "/up/" in r.path]
    heads = [r for r in hub.requests(method="HEAD") if "/up/" in r.path]
    assert not upstream_calls and len(heads) == 2


def test_sync_pushes_one_commit_then_noop(hub, merged, local_family):
    target, ups = merged
    before = len(hub.list_commits(target))
    new = _new_upstream_commit(hub, ups["math"], local_family)
    proc = run_cli("sync", target, "-q", env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    commits = hub.list_commits(target)
    assert len(commits) == before + 1
    assert f"{ups['math']}: " in commits[0]["message"] and new[:12] in commits[0]["message"]
    card = yaml.safe_load(hub.read_file(target, "README.md").decode().split("---")[1])
    recipe = card["hubmerge"]["recipe"]
    assert any(m["model"] == f"{ups['math']}@{new}" for m in recipe["models"])
    assert recipe["hubmerge"]["track"][ups["math"]] == "main"
    assert not check(_client(hub), target).stale
    again = run_cli("sync", target, "-q", env={"HF_ENDPOINT": hub.url})
    assert again.returncode == 0 and "up to date" in again.stdout
    assert len(hub.list_commits(target)) == before + 1


def test_concurrent_syncs_one_commit_one_clean_failure(hub, merged, local_family):
    target, ups = merged
    before = len(hub.list_commits(target))
    _new_upstream_commit(hub, ups["chat"], local_family)
    hub.stall(1.0, times=2, path=r"/commit/")
    outcomes = []

    def run():
        try:
            outcomes.append(sync(_client(hub), target, show_progress=False)[1])
        except HubError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o for o in outcomes if isinstance(o, HubError)]
    pushed = [o for o in outcomes if not isinstance(o, HubError) and o is not None and o.changed]
    assert len(pushed) == 1 and len(errors) == 1 and "changed since" in str(errors[0])
    assert len(hub.list_commits(target)) == before + 1


def test_webhook_payload_parsing():
    payload = {"event": {"action": "update", "scope": "repo.content"},
               "repo": {"type": "model", "name": "up/a", "headSha": "x"},
               "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "1" * 40, "newSha": "2" * 40},
                               {"ref": "refs/pr/3", "oldSha": None, "newSha": "3" * 40},
                               {"ref": "refs/heads/dev", "oldSha": "4" * 40, "newSha": None}]}
    events = parse_events(payload)
    assert [(e.repo, e.branch, e.new_sha) for e in events] == [("up/a", "main", "2" * 40)]
    assert parse_events({**payload, "event": {"scope": "discussion"}}) == []


def _post(url, payload, secret=None):
    headers = {"X-Webhook-Secret": secret} if secret is not None else {}
    return requests.post(url, json=payload, headers=headers, timeout=10)


def test_webhook_auth_debounce_and_sync(hub, merged, local_family):
    target, ups = merged
    client = _client(hub)
    synced = []
    done = threading.Event()

    def trigger(t, events):
        synced.append((t, [e.new_sha for e in events]))
        sync(client, t, show_progress=False)
        done.set()

    receiver = WebhookReceiver("s3cret-value", lambda: {target: tracked_refs(recorded_recipe(client, target)[1])},
                               trigger, debounce=0.5)
    server = make_server(receiver, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/webhook"
    try:
        before = len(hub.list_commits(target))
        new = _new_upstream_commit(hub, ups["chat"], local_family)
        payload = {"event": {"action": "update", "scope": "repo.content"},
                   "repo": {"type": "model", "name": ups["chat"]},
                   "updatedRefs": [{"ref": "refs/heads/main", "oldSha": None, "newSha": new}]}
        assert _post(url, payload).status_code == 401
        assert _post(url, payload, "wrong").status_code == 403
        assert receiver.scheduled() == [] and synced == [] and len(hub.list_commits(target)) == before
        unrelated = {**payload, "repo": {"type": "model", "name": "someone/else"}}
        assert _post(url, unrelated, "s3cret-value").json()["scheduled"] == []
        pr_only = {**payload, "updatedRefs": [{"ref": "refs/pr/1", "newSha": new}]}
        assert _post(url, pr_only, "s3cret-value").json()["scheduled"] == []
        for _ in range(3):
            assert _post(url, payload, "s3cret-value").status_code == 202
        assert done.wait(timeout=60), "the debounced sync never ran"
        assert receiver.scheduled() == [] and len(synced) == 1 and synced[0][0] == target
        assert len(hub.list_commits(target)) == before + 1
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_dispatch_mode_sends_repository_dispatch(hub, merged, local_family, tmp_path):
    target, ups = merged
    received = []
    dispatched = threading.Event()

    class GitHub(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
            dispatched.set()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    github = ThreadingHTTPServer(("127.0.0.1", 0), GitHub)
    threading.Thread(target=github.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HUBMERGE_WEBHOOK_SECRET": "whsec-123456",
           "GITHUB_TOKEN": "ghp_dummy_token_abcdefghijklmnop"}
    proc = subprocess.Popen([sys.executable, "-m", "hubmerge.cli", "webhook", "serve", "--target", target,
                             "--port", str(port), "--debounce", "0.3", "--dispatch", "org/models",
                             "--github-api", f"http://127.0.0.1:{github.server_port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        new = _new_upstream_commit(hub, ups["math"], local_family)
        payload = {"event": {"action": "update", "scope": "repo.content"}, "repo": {"type": "model", "name": ups["math"]},
                   "updatedRefs": [{"ref": "refs/heads/main", "newSha": new}]}
        for _ in range(3):
            assert _post(url, payload, "whsec-123456").status_code == 202
        assert dispatched.wait(timeout=30), "no repository_dispatch arrived"
        # Stopping the receiver with Ctrl-C fires whatever is still pending: after it exits, every dispatch
        # it would ever send has been sent.
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert len(received) == 1
        path, auth, body = received[0]
        assert path == "/repos/org/models/dispatches" and auth == "Bearer ghp_dummy_token_abcdefghijklmnop"
        assert body["event_type"] == "hub-model-updated" and body["client_payload"]["target"] == target
        assert body["client_payload"]["updates"][0]["sha"] == new
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        github.shutdown()
    assert "whsec-123456" not in out + err and "ghp_dummy" not in out + err


def test_sync_prints_the_stale_table_before_pushing(hub, merged, local_family):
    """The table says what is about to be re-merged: it is on stdout while the commit is still held back."""
    target, ups = merged
    before = len(hub.list_commits(target))
    new = _new_upstream_commit(hub, ups["chat"], local_family)
    hub.stall(5.0, times=1, path=r"/commit/")
    proc = subprocess.Popen([sys.executable, "-m", "hubmerge.cli", "sync", target, "-q"],
                            env={**os.environ, "HF_ENDPOINT": hub.url}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"{target} @ ") and "STALE" in first
        assert len(hub.list_commits(target)) == before  # nothing pushed yet when the table is shown
        rest, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    last = rest.strip().splitlines()[-1]
    assert last.startswith(f"re-merged {target} ({ups['chat']} ") and new[:12] in last and "pushed:" in last
    assert len(hub.list_commits(target)) == before + 1
