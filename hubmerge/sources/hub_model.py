"""An input model on the Hub, pinned to a commit SHA: headers by range reads, data streamed or cached.

The Hub is read through the client the caller passes in, which needs only what :class:`HubReads` lists
(``hubmerge.hub.Hub`` is that client); this module never imports ``hubmerge.hub``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import requests
import torch

from hubmerge.errors import SourceError
from hubmerge.sources.model import (
    ModelSource,
    WeightFiles,
    check_relative_file,
    collect_tensors,
    find_weight_files,
    parse_json_file,
)
from hubmerge.sources.pickle_reader import PickleReader, pickle_headers
from hubmerge.sources.readers import LocalFileReader, NoTensors
from hubmerge.sources.remote import RangeFetcher, RemoteReader, check_size, read_remote_header
from hubmerge.sources.safetensors_format import TensorInfo, header_length, parse_header
from hubmerge.spec.model import ModelRef

logger = logging.getLogger(__name__)


def default_endpoint() -> str:
    """The Hub's address: ``HF_ENDPOINT``, else huggingface_hub's default."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


class HubReads(Protocol):
    """What reading a Hub model asks of the Hub client."""

    endpoint: str
    download: bool  # fill the HF cache first instead of streaming
    retry_backoff: float  # first wait of ranged-read retries
    session: requests.Session
    resolved: dict[ModelRef, str]  # refs pinned this session, so each resolves once

    def auth_headers(self) -> dict[str, str]: ...
    def resolve(self, repo_id: str, revision: str | None = None) -> str: ...
    def list_files(self, repo_id: str, sha: str) -> list[Any]: ...  # entries with .path and .size
    def file_url(self, repo_id: str, sha: str, path: str) -> str: ...
    def read_small_file(self, repo_id: str, sha: str, path: str, *, max_bytes: int = ...) -> bytes | None: ...
    def cached_file(self, repo_id: str, sha: str, path: str) -> Path | None: ...
    def download_file(self, repo_id: str, sha: str, path: str) -> Path: ...


class PerFileReader:
    """Dispatches each tensor to the reader of its file (some files cached locally, others remote)."""

    def __init__(self, readers: dict[str, object], fetcher: RangeFetcher | None = None):
        self.readers = readers
        self.fetcher = fetcher  # the ranged-read client behind the remote files (tests tune its retries)

    @property
    def row_blocks(self) -> bool:
        return all(getattr(r, "row_blocks", False) for r in self.readers.values())

    def expect(self, infos: list[TensorInfo]) -> None:
        by_reader: dict[int, list[TensorInfo]] = {}
        for info in infos:
            by_reader.setdefault(id(self.readers[info.file]), []).append(info)
        for reader in {id(r): r for r in self.readers.values()}.values():
            if hasattr(reader, "expect"):
                reader.expect(by_reader.get(id(reader), []))

    def read(self, info: TensorInfo) -> torch.Tensor:
        return self.readers[info.file].read(info)

    def close(self) -> None:
        for reader in {id(r): r for r in self.readers.values()}.values():
            reader.close()


def hub_weights(hub: HubReads, repo: str, sha: str, display: str, listing: dict[str, int | None],
                weights: WeightFiles) -> tuple[dict[str, TensorInfo], PerFileReader]:
    """Tensor table and reader for the weight files of a Hub repo at a pinned SHA.

    Safetensors files found in the HF cache (or downloaded with ``--download``) are read locally, the
    others by range requests. Pickles cannot be range-read: they are downloaded into the HF cache."""
    for file in weights.files:
        if file not in listing:
            raise SourceError(f"{display}: the index names {file}, which is not in the repo")
    if weights.pickle:
        paths = {}
        headers: dict[str, dict[str, TensorInfo]] = {}
        for file in weights.files:
            paths[file] = hub.cached_file(repo, sha, file) or hub.download_file(repo, sha, file)
            headers[file] = pickle_headers(paths[file], file, f"{display}/{file}")
        reader = PickleReader(paths, display)
        return collect_tensors(headers, weights.weight_map, model=display), PerFileReader(
            {f: reader for f in weights.files})

    fetcher = RangeFetcher(hub.session, hub.auth_headers(), backoff=hub.retry_backoff)
    remote_urls: dict[str, str] = {}
    readers: dict[str, object] = {}
    headers = {}
    local_readers: dict[Path, LocalFileReader] = {}
    for file in weights.files:
        local = hub.cached_file(repo, sha, file)
        if local is None and hub.download:
            local = hub.download_file(repo, sha, file)
        if local is not None:
            root = Path(str(local)[: -len(file)]) if str(local).endswith(file) else local.parent
            reader = local_readers.setdefault(root, LocalFileReader(root))
            size = local.stat().st_size
            n = header_length(reader.read_prefix(file, 8), file=f"{display}/{file}", file_size=size)
            headers[file] = parse_header(reader.read_prefix(file, n, 8), file=file, file_size=size,
                                         display=f"{display}/{file}").tensors
            readers[file] = reader
            continue
        url = hub.file_url(repo, sha, file)
        size = check_size(listing[file], f"{display}/{file}")
        headers[file] = read_remote_header(fetcher, url, file=file, file_size=size, display=f"{display}/{file}").tensors
        remote_urls[file] = url
    if remote_urls:
        remote = RemoteReader(fetcher, remote_urls, display)
        for file in remote_urls:
            readers[file] = remote
    return collect_tensors(headers, weights.weight_map, model=display), PerFileReader(readers, fetcher)


def pinned_listing(hub: HubReads, ref: ModelRef) -> tuple[str, str, dict[str, int | None]]:
    """(SHA, display name, file -> size) of a Hub ref, resolved once per ref and session."""
    sha = hub.resolved.get(ref) or hub.resolve(ref.path, ref.revision)
    hub.resolved[ref] = sha
    display = f"{ref.path}@{sha[:12]}"
    listing = {f.path: f.size for f in hub.list_files(ref.path, sha)}
    for path in listing:
        check_relative_file(path, context=f"{display} file list")
    return sha, display, listing


def open_hub_model(hub: HubReads, ref: ModelRef, *, allow_pickle: bool = False,
                   files_only: bool = False) -> ModelSource:
    """``files_only``: the repo's side files (a tokenizer donor), no weights and config.json optional."""
    repo = ref.path
    sha, display, listing = pinned_listing(hub, ref)

    def read_file(name: str) -> bytes | None:
        if name not in listing:
            return None
        return hub.read_small_file(repo, sha, name)

    raw_config = read_file("config.json")
    if raw_config is None and not files_only:
        raise SourceError(f"{display}: no config.json in the repo", hint="is this a transformers model repo?")
    config = parse_json_file(raw_config, context=f"{display}/config.json") if raw_config is not None else {}
    if not isinstance(config, dict):
        raise SourceError(f"{display}/config.json must be a JSON object")

    if files_only:
        tensors, reader, extra = {}, NoTensors(), {}
    else:
        weights = find_weight_files(list(listing), lambda f: parse_json_file(read_file(f), context=f"{display}/{f}"),
                                    display, allow_pickle=allow_pickle)
        tensors, reader = hub_weights(hub, repo, sha, display, listing, weights)
        extra = {"fetcher": reader.fetcher}
    return ModelSource(
        ref=ref,
        name=repo,
        config=config,
        tensors=tensors,
        reader=reader,
        read_file=read_file,
        list_files=lambda: sorted(listing),
        revision=sha,
        is_hub=True,
        extra=extra,
    )
