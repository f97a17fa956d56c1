"""One facade for the Hub, as ``HfApi`` is for huggingface_hub: the rest of hubmerge asks it for SHAs,
bytes and commits and never builds calls itself. One ``HfApi(endpoint=..., token=...)`` is threaded
through (``ModelCard.load``/``push_to_hub`` and ``metadata_update`` ignore the endpoint, so we never use them).
Errors come out as ``HubError`` with a kind (``hubmerge.hub.errors``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import requests
import requests.adapters

from hubmerge.errors import HubError, SourceError
from hubmerge.hub.errors import hub_errors
from hubmerge.hub.uploads import ShardHandoff
from hubmerge.sources.hub_model import default_endpoint
from hubmerge.sources.link import MAX_IN_FLIGHT
from hubmerge.spec.model import ModelRef

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
GENERATED_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    lfs_sha256: str | None = None  # the content hash of a file stored in LFS/Xet (shards), None for small files


def stale_weight_files(old_files: Iterable[str], new_files: Iterable[str]) -> list[str]:
    """What a commit of a new merge deletes: the weights and weight indexes of the old one it does not rewrite."""
    return sorted(p for p in set(old_files) - set(new_files) if p.endswith(WEIGHT_SUFFIXES) or p in GENERATED_FILES)


def folder_files(folder: Path) -> dict[str, Path]:
    """The files of a merged folder to commit, by name (hidden bookkeeping files left out)."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


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
        # Range reads run on up to MAX_IN_FLIGHT connections at once (sources.remote); the default pool of
        # 10 would close and reopen the others on every request, a round trip each.
        adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=MAX_IN_FLIGHT)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
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

    def list_files(self, repo_id: str, sha: str, *, what: str | None = None) -> list[RemoteFile]:
        """Every file at a commit (or a ref such as ``refs/pr/3``), with sizes and LFS hashes."""
        with hub_errors(what or f"{repo_id}@{sha[:12]}"):
            info = self.api.model_info(repo_id, revision=sha, files_metadata=True)
        return [RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in (info.siblings or [])]

    def repo_files(self, repo_id: str, revision: str | None = None) -> tuple[str | None, list[str]]:
        """(commit SHA, file names) of a revision, in one call."""
        with hub_errors(f"{repo_id}@{revision or 'main'}"):
            info = self.api.model_info(repo_id, revision=revision)
        return info.sha or revision, [s.rfilename for s in (info.siblings or [])]

    def main_head(self, repo_id: str, *, what: str | None = None) -> str | None:
        """The commit ``main`` points at; None for a repo without commits."""
        with hub_errors(what or repo_id):
            refs = self.api.list_repo_refs(repo_id)
        return next((b.target_commit for b in refs.branches if b.name == "main"), None)

    def repo_exists(self, repo_id: str) -> bool:
        with hub_errors(f"target {repo_id}"):
            return self.api.repo_exists(repo_id)

    def whoami(self) -> dict[str, Any]:
        """The account of the token: ``name``, ``orgs``..."""
        with hub_errors("signing in"):
            return self.api.whoami()

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
            if exc.kind == HubError.NOT_FOUND and exc.missing == "file":
                return None
            raise
        except hf.EntryNotFoundError:
            return None
        return _bounded_read(Path(local), f"{repo_id}/{path}", max_bytes)

    def read_json(self, repo_id: str, revision: str, path: str, *, max_bytes: int = 50 * 1024 * 1024) -> Any | None:
        """A JSON file at a commit or a moving ref (a ref is downloaded afresh, a SHA may come from the cache);
        None when the repo, the revision or the file does not exist."""
        from huggingface_hub import hf_hub_download

        try:
            with hub_errors(f"{repo_id}@{revision}/{path}"):
                local = hf_hub_download(repo_id, path, revision=revision, endpoint=self.endpoint,
                                        token=self.token or False, force_download=not _SHA.match(revision))
        except HubError as exc:
            if exc.kind == HubError.NOT_FOUND:
                return None
            raise
        return json.loads(_bounded_read(Path(local), f"{repo_id}/{path}", max_bytes))

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

    # -- writing ----------------------------------------------------------------------------
    def ensure_writable_repo(self, repo_id: str, *, private: bool = False) -> str | None:
        """Create the repo if it does not exist, check this token may write to it, and return the commit
        ``main`` points at (None for a new, empty repo): commits are guarded by it."""
        with hub_errors(f"target {repo_id}"):
            self.api.create_repo(repo_id, private=private, exist_ok=True)
            self.check_write(repo_id)
            return self.main_head(repo_id, what=f"target {repo_id}")

    def check_write(self, repo_id: str) -> None:
        with hub_errors(f"target {repo_id}"):
            self.api.auth_check(repo_id, write=True)

    def preupload(self, repo_id: str, path: Path, *, revision: str | None = None, create_pr: bool = False,
                  where: str | None = None) -> Any:
        """Upload a shard's bytes now; the returned operation goes into the commit, which then only names them."""
        from huggingface_hub import CommitOperationAdd

        op = CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
        with hub_errors(f"uploading {path.name} to {where or repo_id}"):
            self.api.preupload_lfs_files(repo_id, additions=[op], revision=revision, create_pr=create_pr or None)
        return op

    def commit(self, repo_id: str, *, message: str, uploaded: Sequence[Any] = (),
               add: Mapping[str, Path | bytes] | None = None, delete: Iterable[str] = (),
               description: str | None = None, parent: str | None = None, revision: str | None = None,
               create_pr: bool = False, what: str | None = None) -> Any:
        """One commit: the pre-uploaded shards, then ``add`` (path in repo -> local file or bytes), then the
        deletions. With ``parent``, it fails (``HubError.CONFLICT``) if the branch moved since that commit."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        operations: list = list(uploaded)
        operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data if isinstance(data, bytes)
                                          else str(data)) for name, data in (add or {}).items()]
        operations += [CommitOperationDelete(path_in_repo=name) for name in delete]
        with hub_errors(what or f"committing to {repo_id}"):
            return self.api.create_commit(repo_id, operations, commit_message=message,
                                          commit_description=description, parent_commit=parent, revision=revision,
                                          create_pr=create_pr or None)

    def open_pull_request(self, repo_id: str, *, title: str, description: str) -> int:
        with hub_errors(f"opening a pull request on {repo_id}"):
            return self.api.create_pull_request(repo_id, title=title, description=description).num

    def merge_pull_request(self, repo_id: str, number: int, *, comment: str, what: str | None = None) -> None:
        with hub_errors(what or f"merging {repo_id}#{number}"):
            self.api.merge_pull_request(repo_id, number, comment=comment)

    def delete_repo(self, repo_id: str) -> None:
        with hub_errors(f"cleaning up {repo_id}"):
            self.api.delete_repo(repo_id, missing_ok=True)


class ShardUploader:
    """A merge's ``on_shard`` callback: each finished shard is uploaded and deleted locally, on a thread of
    its own so the upload overlaps the merge of the next shard (``hub.uploads.ShardHandoff``: at most two
    shards on disk, the first upload error stops the merge). Use it as a context manager around the merge
    and call ``wait`` before committing ``uploaded``."""

    def __init__(self, hub: Hub, repo_id: str, *, staging: Path, revision: str | None = None,
                 create_pr: bool = False, where: str | None = None):
        self.hub, self.repo_id, self.revision, self.create_pr, self.where = hub, repo_id, revision, create_pr, where
        self.uploaded: list = []
        self._handoff = ShardHandoff(self._upload, staging)

    def __call__(self, path: Path) -> None:
        self._handoff.submit(path)

    def _upload(self, path: Path) -> None:
        op = self.hub.preupload(self.repo_id, path, revision=self.revision, create_pr=self.create_pr,
                                where=self.where)
        path.unlink()
        self.uploaded.append(op)

    def wait(self) -> None:
        """Every shard handed over is uploaded; raises the first upload error."""
        self._handoff.finish()

    def __enter__(self) -> "ShardUploader":
        return self

    def __exit__(self, *exc) -> None:
        self._handoff.close()  # never leave an upload running behind a failed merge

    def sha256(self) -> dict[str, str]:
        """Name -> hex SHA-256 of every uploaded shard."""
        return {op.path_in_repo: op.upload_info.sha256.hex() for op in self.uploaded}


def _bounded_read(path: Path, display: str, max_bytes: int) -> bytes:
    size = path.stat().st_size
    if size > max_bytes:
        raise SourceError(f"{display} is {size} bytes, more than the {max_bytes} allowed for it")
    return path.read_bytes()
