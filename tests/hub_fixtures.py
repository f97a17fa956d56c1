"""pytest plugin (declared in conftest.py): a loopback Hub shared by the whole session.

conftest.py has already chosen HUBMERGE_TEST_HUB_PORT and pointed HF_ENDPOINT / HF_TOKEN at it before
anything imported huggingface_hub, so the server must listen on exactly that port.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest
from hubserver import HubServer

_repo_counter = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def _hub_client_env_is_frozen_correctly():
    """huggingface_hub reads its env at import time: fail loudly if something imported it too early."""
    import huggingface_hub.constants as constants

    assert constants.HF_HUB_DISABLE_XET, "HF_HUB_DISABLE_XET must be set before huggingface_hub is imported"
    port = os.environ["HUBMERGE_TEST_HUB_PORT"]
    assert constants.ENDPOINT == f"http://127.0.0.1:{port}", constants.ENDPOINT


@pytest.fixture(scope="session")
def hub_server():
    server = HubServer(port=int(os.environ["HUBMERGE_TEST_HUB_PORT"]), token=os.environ["HF_TOKEN"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server: HubServer):
    """The session server with no faults armed and an empty request log. Repos persist across tests:
    use `repo_id_factory` for fresh names."""
    hub_server.reset_faults()
    hub_server.clear_log()
    errors_before = len(hub_server.internal_errors)
    yield hub_server
    hub_server.reset_faults()
    new_errors = hub_server.internal_errors[errors_before:]
    assert not new_errors, "test hub server crashed:\n" + "\n".join(new_errors)


@pytest.fixture
def hub_token() -> str:
    return os.environ["HF_TOKEN"]


@pytest.fixture
def hub_api(hub: HubServer, hub_token: str):
    import huggingface_hub

    return huggingface_hub.HfApi(endpoint=hub.url, token=hub_token)


@pytest.fixture
def repo_id_factory(request, hub: HubServer):
    """Unique repo ids per call, e.g. "tester/test-upload-3" (namespace defaults to the token's user)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:60]

    def make(namespace: str | None = None) -> str:
        return f"{namespace or hub.user}/{stem}-{next(_repo_counter)}"

    return make
