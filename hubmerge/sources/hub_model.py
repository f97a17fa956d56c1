"""An input model on the Hub, pinned to a commit SHA: headers by range reads, data streamed or cached."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from hubmerge.errors import SourceError
from hubmerge.sources.model import (
    INDEX_FILE,
    SINGLE_FILE,
    ModelSource,
    check_relative_file,
    collect_tensors,
    parse_json_file,
    refuse_pickle,
    weight_files_from_index,
)
from hubmerge.sources.readers import LocalFileReader
from hubmerge.sources.remote import RangeFetcher, RemoteReader, check_size, read_remote_header
from hubmerge.sources.safetensors_format import TensorInfo, header_length, parse_header
from hubmerge.spec.model import ModelRef

logger = logging.getLogger(__name__)


class PerFileReader:
    """Dispatches each tensor to the reader of its file (some files cached locally, others remote)."""

    def __init__(self, readers: dict[str, object]):
        self.readers = readers

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


def open_hub_model(hub, ref: ModelRef) -> ModelSource:
    repo = ref.path
    sha = hub.resolved.get(ref) or hub.resolve(repo, ref.revision)
    hub.resolved[ref] = sha
    display = f"{repo}@{sha[:12]}"
    listing = {f.path: f.size for f in hub.list_files(repo, sha)}
    for path in listing:
        check_relative_file(path, context=f"{display} file list")

    def read_file(name: str) -> bytes | None:
        if name not in listing:
            return None
        return hub.read_small_file(repo, sha, name)

    raw_config = read_file("config.json")
    if raw_config is None:
        raise SourceError(f"{display}: no config.json in the repo", hint="is this a transformers model repo?")
    config = parse_json_file(raw_config, context=f"{display}/config.json")
    if not isinstance(config, dict):
        raise SourceError(f"{display}/config.json must be a JSON object")

    weight_map = None
    if INDEX_FILE in listing:
        index = parse_json_file(read_file(INDEX_FILE), context=f"{display}/{INDEX_FILE}")
        weight_map = weight_files_from_index(index, context=f"{display}/{INDEX_FILE}")
        weight_files = sorted(set(weight_map.values()))
    elif SINGLE_FILE in listing:
        weight_files = [SINGLE_FILE]
    else:
        weight_files = sorted(p for p in listing if p.endswith(".safetensors") and "/" not in p)
        if not weight_files:
            refuse_pickle(list(listing), display)

    fetcher = RangeFetcher(hub.session, hub.auth_headers(), backoff=hub.retry_backoff)
    remote_urls: dict[str, str] = {}
    readers: dict[str, object] = {}
    headers: dict[str, dict[str, TensorInfo]] = {}
    local_readers: dict[Path, LocalFileReader] = {}
    for file in weight_files:
        if file not in listing:
            raise SourceError(f"{display}: the index names {file}, which is not in the repo")
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

    return ModelSource(
        ref=ref,
        name=repo,
        config=config,
        tensors=collect_tensors(headers, weight_map, model=display),
        reader=PerFileReader(readers),
        read_file=read_file,
        list_files=lambda: sorted(listing),
        revision=sha,
        is_hub=True,
        extra={"fetcher": fetcher},
    )
