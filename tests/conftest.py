"""Test-wide setup. The environment must be fixed before anything imports huggingface_hub,
because the client freezes HF_ENDPOINT, HF_HUB_DISABLE_XET and friends at import time."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HUB_PORT = int(os.environ.get("HUBMERGE_TEST_HUB_PORT") or _free_port())
HUB_TOKEN = "hf_test_0123456789abcdefghijklmnopqrstuv"
_HF_HOME = tempfile.mkdtemp(prefix="hubmerge-test-hf-home-")

os.environ["HUBMERGE_TEST_HUB_PORT"] = str(HUB_PORT)
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_TOKEN"] = HUB_TOKEN
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_ETAG_TIMEOUT"] = "5"
os.environ["HF_HUB_DOWNLOAD_TIMEOUT"] = "10"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("PYTHONHASHSEED", "0")

pytest_plugins = ["hub_fixtures"]
