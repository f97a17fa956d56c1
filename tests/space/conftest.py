"""The Space (space/app.py) launched in-process against the session's loopback Hub.

The app is imported after tests/conftest.py pointed HF_ENDPOINT at the test Hub, and launched once per
session on 127.0.0.1 (Gradio scans from port 7860). Signing in uses the app's local OAuth stand-in
(space/space_oauth.py): browser tests set HUBMERGE_LOCAL_OAUTH_TOKEN, gradio_client passes
``oauth_token=`` straight to the handlers that declare ``gr.OAuthToken``.
"""

from __future__ import annotations

import os
import sys

import pytest
from helpers import family, publish_family
from space_support import ALICE, ALICE_TOKEN, SPACE_DIR


@pytest.fixture(scope="session")
def space(hub_server):
    """(app module, base URL) of the running Space."""
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    hub_server.add_token(ALICE_TOKEN, user=ALICE, role="write")
    if str(SPACE_DIR) not in sys.path:
        sys.path.insert(0, str(SPACE_DIR))
    import app  # noqa: PLC0415 - after the Hub env is fixed

    _, url, _ = app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_error=True)
    yield app, url.rstrip("/")
    app.demo.close()


@pytest.fixture
def client(space):
    from gradio_client import Client

    return Client(space[1], verbose=False, analytics_enabled=False, oauth_token=ALICE_TOKEN)


@pytest.fixture
def anonymous_client(space):
    from gradio_client import Client

    return Client(space[1], verbose=False, analytics_enabled=False)


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("space-family")
    family(root)  # base, chat, math, code: tiny llama-shaped models
    return root


@pytest.fixture
def parents(hub, repo_id_factory, tiny_family):
    """base / chat / math published (public) on the test Hub by another user; their repo ids."""
    return publish_family(hub, repo_id_factory, tiny_family)

