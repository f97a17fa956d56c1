"""One facade for the Hub, as ``HfApi`` is for huggingface_hub: the rest of hubmerge asks it for SHAs,
bytes and commits and never builds URLs itself. One ``HfApi(endpoint=..., token=...)`` is threaded
through (``ModelCard.load``/``push_to_hub`` and ``metadata_update`` ignore the endpoint, so we never use them).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import requests

from hubmerge.errors import HubError, SourceError
from hubmerge.sources.hub_model import default_endpoint
from hubmerge.spec.model import ModelRef

logger = logging.getLogger(__name__)


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into HubErrors a user can act on (never echoing a token)."""
    from huggingface_hub import errors as hf

    try:
        yield
    except HubError:
        raise
    except hf.GatedRepoError:
        raise HubError(f"{what}: the repo is gated and this token has no access",
                       hint="accept the model's terms on its Hub page, then pass a token with access") from None
    except hf.RepositoryNotFoundError:
        raise HubError(f"{what}: repo not found (or private without access)",
                       hint="check the repo id; for a private repo pass a token (HF_TOKEN)") from None
    except hf.RevisionNotFoundError:
        raise HubError(f"{what}: revision not found", hint="check the branch, tag or commit after '@'") from None
    except hf.RemoteEntryNotFoundError:
        raise HubError(f"{what}: file not found in the repo") from None
    except hf.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            raise HubError(f"{what}: the token was rejected (HTTP 401)",
                           hint="create a new token at huggingface.co/settings/tokens and set HF_TOKEN") from None
        if status == 403:
            raise HubError(f"{what}: permission denied (HTTP 403)",
                           hint="the token needs write access to this repo") from None
        if status == 412:
            raise HubError(f"{what}: the repo changed since the merge started (another commit landed)",
                           hint="run again to merge on top of the new head, or use --create-pr") from None
        if status == 429:
            wait = exc.response.headers.get("Retry-After", "a few") if exc.response is not None else "a few"
            raise HubError(f"{what}: rate limited by the Hub; retry in {wait} seconds",
                           hint="pass a token: anonymous limits are shared per IP") from None
        raise HubError(f"{what}: Hub error HTTP {status}: {_first_line(str(exc))}") from None
    except (requests.ConnectionError, OSError) as exc:
        if type(exc).__name__ in ("FileNotFoundError", "IsADirectoryError", "PermissionError"):
            raise
        raise HubError(f"{what}: cannot reach the Hub ({type(exc).__name__})",
                       hint="check the network or HF_ENDPOINT; behind a proxy try HF_HUB_DISABLE_XET=1") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpx2", "httpcore")):
            raise HubError(f"{what}: cannot reach the Hub ({type(exc).__name__})",
                           hint="check the network or HF_ENDPOINT") from None
        raise


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None


class Hub:
    def __init__(self, endpoint: str | None = None, token: str | None | bool = None, *, use_cache: bool = True,
                 download: bool = False, retry_backoff: float = 0.5):
        from huggingface_hub import get_token

        self.endpoint = (endpoint or default_endpoint()).rstrip("/")
        self.token = get_token() if token is None else (token or None)
        self.use_cache = use_cache
        self.download = download
        self.retry_backoff = retry_backoff  # first wait of ranged-read retries (doubles each time)
        self.session = requests.Session()
        self.resolved: dict[ModelRef, str] = {}

    @cached_property
    def api(self):
        """The ``HfApi`` client, made on first use: a merge of local models never needs it (nor its imports)."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token or False)

    # -- auth headers, never logged -------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        from hubmerge import __version__

        headers = {"User-Agent": f"hubmerge/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    # -- pinning ----------------------------------------------------------------------------
    def resolve(self, repo_id: str, revision: str | None = None) -> str:
        """The commit SHA a ref points at now (``resolve_revision(...).resolved``)."""
        with hub_errors(f"{repo_id}@{revision or 'main'}"):
            info = self.api.model_info(repo_id, revision=revision, expand=["sha"])
        if not info.sha:
            raise HubError(f"{repo_id}@{revision or 'main'}: the Hub returned no commit SHA")
        return info.sha

    def head_sha(self, repo_id: str, revision: str = "main") -> str:
        """Cheap change detection: one resolver HEAD, reading X-Repo-Commit."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        with hub_errors(f"{repo_id}@{revision}"):
            meta = get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision, endpoint=self.endpoint),
                                        token=self.token or False)
        return meta.commit_hash

    def list_files(self, repo_id: str, sha: str) -> list[RemoteFile]:
        with hub_errors(f"{repo_id}@{sha[:12]}"):
            info = self.api.model_info(repo_id, revision=sha, files_metadata=True)
        return [RemoteFile(s.rfilename, s.size) for s in (info.siblings or [])]

    def file_url(self, repo_id: str, sha: str, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo_id, path, revision=sha, endpoint=self.endpoint)

    def read_small_file(self, repo_id: str, sha: str, path: str, *, max_bytes: int = 50 * 1024 * 1024) -> bytes | None:
        """A config/tokenizer/README file, through the HF cache (pinned SHAs make cache hits free)."""
        from huggingface_hub import errors as hf
        from huggingface_hub import hf_hub_download

        try:
            with hub_errors(f"{repo_id}@{sha[:12]}/{path}"):
                local = hf_hub_download(repo_id, path, revision=sha, endpoint=self.endpoint, token=self.token or False)
        except HubError as exc:
            if "file not found" in exc.message:
                return None
            raise
        except hf.EntryNotFoundError:
            return None
        size = Path(local).stat().st_size
        if size > max_bytes:
            raise SourceError(f"{repo_id}/{path} is {size} bytes, more than the {max_bytes} allowed for it")
        return Path(local).read_bytes()

    def cached_file(self, repo_id: str, sha: str, path: str) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        if not self.use_cache:
            return None
        found = try_to_load_from_cache(repo_id, path, revision=sha)
        return Path(found) if isinstance(found, str) else None

    def download_file(self, repo_id: str, sha: str, path: str) -> Path:
        from huggingface_hub import hf_hub_download

        with hub_errors(f"{repo_id}@{sha[:12]}/{path}"):
            return Path(hf_hub_download(repo_id, path, revision=sha, endpoint=self.endpoint, token=self.token or False))

    def readme(self, repo_id: str, sha: str | None) -> str | None:
        """A repo's README.md at a commit, as text; None without a commit (no repo yet) or without a README."""
        if sha is None:
            return None
        data = self.read_small_file(repo_id, sha, "README.md")
        return data.decode("utf-8", errors="replace") if data is not None else None
