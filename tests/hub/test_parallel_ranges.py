"""Hub reads over a shaped link: large ranges in parallel pieces, CDN redirects remembered, faults survived.

The merged bytes must not depend on how the reads were cut: every merge here is compared with the same
merge of the same models read from local folders.
"""

from __future__ import annotations

import pytest
import torch
from helpers import family, load_folder, publish_folder
from netshape import LinkProfile

from hubmerge.hub import Hub
from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.sources.open import open_model
from hubmerge.spec.model import ModelRef
from hubmerge.spec.parse import parse_spec

MB = 1_000_000
# Embeddings and the head of 16.8 MB each: several pieces per tensor; layers are small neighbours.
SHAPE = {"vocab": 16384, "hidden": 256, "intermediate": 512, "layers": 2}
LINEAR = """
merge_method: linear
models:
  - {{model: {base}, parameters: {{weight: 0.5}}}}
  - {{model: {chat}, parameters: {{weight: 0.3}}}}
  - {{model: {math}, parameters: {{weight: 0.2}}}}
"""


@pytest.fixture(scope="module")
def local_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    family(root, dtype="float32", **SHAPE)
    return root


@pytest.fixture(scope="module")
def local_merge(local_family, tmp_path_factory):
    spec = parse_spec(LINEAR.format(base="base", chat="chat", math="math"))
    out = tmp_path_factory.mktemp("local") / "out"
    result = run_merge(spec, out, MergeOptions(base_dir=local_family, show_progress=False))
    return result.content_hash, load_folder(out)


@pytest.fixture
def published(hub, repo_id_factory, local_family):
    return {name: publish_folder(hub, (repo := repo_id_factory()), local_family / name) and repo
            for name in ("base", "chat", "math")}


def _merge_from_hub(hub, published, out):
    client = Hub(endpoint=hub.url, use_cache=False, retry_backoff=0.01)
    spec = parse_spec(LINEAR.format(**published))
    return run_merge(spec, out, MergeOptions(show_progress=False), hub=client)


def test_shaped_link_merge_equals_local_and_reads_each_byte_once(hub, published, local_family, local_merge,
                                                                 tmp_path):
    hub.enable_cdn_redirect("lfs")
    hub.shape(LinkProfile("test", latency=0.01, per_connection=40 * MB, aggregate=120 * MB))
    hub.clear_log()
    result = _merge_from_hub(hub, published, tmp_path / "out")
    assert result.content_hash == local_merge[0]
    merged = load_folder(tmp_path / "out")
    assert all(torch.equal(merged[k], local_merge[1][k]) for k in local_merge[1])

    for name, repo in published.items():
        model = open_model(ModelRef(str(local_family / name)))
        needed = sum(i.nbytes for i in model.tensors.values())
        header = min(i.start for i in model.tensors.values())
        embed = model.tensors["model.embed_tokens.weight"]
        model.close()
        served = hub.bytes_for(repo, "model.safetensors")
        assert needed + header <= served <= needed + header + 4096 * len(model.tensors), (name, served, needed)
        cdn = [r for r in hub.requests(method="GET") if r.file == (repo, "model.safetensors")
               and r.host.startswith("localhost")]
        assert cdn and not any(r.auth for r in cdn)  # the token never goes to the CDN origin
        # The 16.8 MB embedding came in pieces, one request each, that tile its bytes exactly.
        pieces = sorted(tuple(int(x) for x in r.range.removeprefix("bytes=").split("-")) for r in cdn
                        if embed.start <= int(r.range.removeprefix("bytes=").split("-")[0]) < embed.end)
        assert len(pieces) >= 3, pieces
        assert pieces[0][0] == embed.start and all(a[1] + 1 == b[0] for a, b in zip(pieces, pieces[1:]))
        # Only the first range went through the Hub's /resolve; the rest used the CDN URL it gave.
        resolves = hub.requests(path=f"{repo}/resolve/.*/model.safetensors", method="GET")
        assert len(resolves) == 1
    assert hub.peak_answering >= 4  # pieces and tensors of several models in flight at once


def test_faults_in_pieces_are_retried_and_change_nothing(hub, published, local_merge, tmp_path):
    hub.enable_cdn_redirect("lfs")
    hub.shape(LinkProfile("test", latency=0.005, per_connection=60 * MB))
    hub.drop_connection(after_bytes=300_000, times=3, path="/cdn/")
    hub.fail_requests(503, times=2, path="/cdn/")
    result = _merge_from_hub(hub, published, tmp_path / "out")
    assert result.content_hash == local_merge[0]
    assert all(torch.equal(v, local_merge[1][k]) for k, v in load_folder(tmp_path / "out").items())
    assert [f for f in hub._faults if f.remaining] == []  # every fault was hit


def test_expired_cdn_target_is_asked_for_again(hub, published, local_family):
    hub.enable_cdn_redirect("lfs")
    repo = published["chat"]
    remote = open_model(ModelRef(repo), hub=Hub(endpoint=hub.url, use_cache=False, retry_backoff=0.01))
    local = open_model(ModelRef(str(local_family / "chat")))
    info = remote.tensors["model.embed_tokens.weight"]
    hub.clear_log()
    hub.fail_requests(403, times=1, path="/cdn/")
    remote.reader.expect([info])
    assert torch.equal(remote.reader.read(info), local.reader.read(local.tensors[info.name]))
    # The 403 sent that piece back to /resolve (other pieces may have raced it there too).
    assert 1 <= len(hub.requests(path=f"{repo}/resolve/", method="GET")) <= info.nbytes // (4 * MB)
    remote.close()
    local.close()
