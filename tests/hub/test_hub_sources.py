"""Reading models from the (loopback) Hub: pinned SHAs, exact ranges, retries, clear errors."""

from __future__ import annotations

import pytest
import torch
from helpers import family, publish_folder

from hubmerge.errors import HubError
from hubmerge.hub import Hub
from hubmerge.sources.open import open_model
from hubmerge.spec.model import ModelRef


@pytest.fixture(scope="module")
def local_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam")
    family(root, dtype="bfloat16")
    return root


@pytest.fixture
def published(hub, repo_id_factory, local_family):
    repo = repo_id_factory()
    sha = publish_folder(hub, repo, local_family / "chat")
    return repo, sha


def _no_cache_hub(hub):
    return Hub(endpoint=hub.url, use_cache=False)


def test_streamed_tensors_equal_local_and_only_needed_bytes(hub, published, local_family):
    repo, sha = published
    client = _no_cache_hub(hub)
    remote = open_model(ModelRef(repo), hub=client)
    local = open_model(ModelRef(str(local_family / "chat")))
    assert remote.revision == sha and remote.is_hub
    hub.clear_log()
    infos = sorted(remote.tensors.values(), key=lambda i: i.start)
    remote.reader.expect(infos)
    for info in infos:
        assert torch.equal(remote.reader.read(info), local.reader.read(local.tensors[info.name]))
    served = hub.bytes_for(repo, "model.safetensors")
    needed = sum(i.nbytes for i in infos)
    assert needed <= served <= 1.05 * needed
    gets = [r for r in hub.requests(method="GET") if r.file and r.file[1] == "model.safetensors"]
    assert gets and all(r.status == 206 for r in gets)
    assert len(gets) < len(infos) / 4  # neighbouring tensors coalesced
    remote.close()
    local.close()


def test_revision_is_pinned_even_if_main_moves(hub, published, local_family):
    repo, sha = published
    client = _no_cache_hub(hub)
    remote = open_model(ModelRef(repo), hub=client)
    hub.commit_files(repo, {"model.safetensors": (local_family / "math" / "model.safetensors").read_bytes()})
    info = remote.tensors["model.norm.weight"]
    hub.clear_log()
    remote.reader.read(info)
    assert all(sha in r.path for r in hub.requests(method="GET"))
    remote.close()


def test_ignored_range_is_an_error(hub, published):
    repo, _ = published
    hub.ignore_range()
    with pytest.raises(HubError, match="ignored the Range header"):
        open_model(ModelRef(repo), hub=_no_cache_hub(hub))


def test_transient_faults_are_retried(hub, published, local_family):
    repo, _ = published
    remote = open_model(ModelRef(repo), hub=_no_cache_hub(hub))
    waits = []
    remote.extra["fetcher"].sleep = waits.append
    info = max(remote.tensors.values(), key=lambda i: i.nbytes)
    hub.fail_requests(503, times=2, path="model.safetensors")
    hub.fail_requests(429, times=1, path="model.safetensors", retry_after=3)
    got = remote.reader.read(info)
    local = open_model(ModelRef(str(local_family / "chat")))
    assert torch.equal(got, local.reader.read(local.tensors[info.name]))
    assert len(waits) == 3 and max(waits) >= 3  # backoff, and the server's Retry-After honoured
    remote.close()
    local.close()


def test_dropped_transfer_resumes_where_it_broke(hub, published, local_family):
    repo, _ = published
    remote = open_model(ModelRef(repo), hub=_no_cache_hub(hub))
    remote.extra["fetcher"].sleep = lambda s: None
    info = max(remote.tensors.values(), key=lambda i: i.nbytes)
    hub.clear_log()
    hub.drop_connection(after_bytes=1000, times=1, path="model.safetensors")
    got = remote.reader.read(info)
    local = open_model(ModelRef(str(local_family / "chat")))
    assert torch.equal(got, local.reader.read(local.tensors[info.name]))
    ranges = [r.headers.get("Range") for r in hub.requests(method="GET") if r.file and r.file[1] == "model.safetensors"]
    assert ranges == [f"bytes={info.start}-{info.end - 1}", f"bytes={info.start + 1000}-{info.end - 1}"]
    assert hub.bytes_for(repo, "model.safetensors") == info.nbytes
    remote.close()
    local.close()


def test_persistent_rate_limit_reports_the_wait(hub, published):
    repo, _ = published
    client = _no_cache_hub(hub)
    remote = open_model(ModelRef(repo), hub=client)
    remote.extra["fetcher"].sleep = lambda s: None
    hub.fail_requests(429, times=20, path="model.safetensors", retry_after=7)
    with pytest.raises(HubError, match="retry after 7"):
        remote.reader.read(remote.tensors["model.norm.weight"])
    remote.close()


def test_cdn_redirect_drops_the_token(hub, published, local_family):
    repo, _ = published
    hub.enable_cdn_redirect("all")
    remote = open_model(ModelRef(repo), hub=_no_cache_hub(hub))
    info = remote.tensors["model.norm.weight"]
    assert remote.reader.read(info).shape == info.shape
    cdn = [r for r in hub.requests() if r.host.startswith("localhost")]
    assert cdn and not any(r.auth for r in cdn)
    remote.close()


@pytest.mark.parametrize("ref, needle", [
    ("tester/does-not-exist", "repo not found"),
])
def test_missing_repo(hub, ref, needle):
    with pytest.raises(HubError, match=needle):
        open_model(ModelRef(ref), hub=_no_cache_hub(hub))


def test_missing_revision(hub, published):
    repo, _ = published
    with pytest.raises(HubError, match="revision not found"):
        open_model(ModelRef(repo, "no-such-branch"), hub=_no_cache_hub(hub))


def test_bad_token(hub, published):
    repo, _ = published
    with pytest.raises(HubError, match="token was rejected") as err:
        open_model(ModelRef(repo), hub=Hub(endpoint=hub.url, token="hf_wrong_token_000000000000000000"))
    assert "hf_wrong" not in str(err.value)


def test_gated_repo(hub, repo_id_factory, local_family):
    repo = repo_id_factory(namespace="someone")
    hub.create_repo(repo, gated=True, owner="someone")
    hub.commit_files(repo, {p.name: p.read_bytes() for p in (local_family / "base").iterdir()})
    with pytest.raises(HubError, match="gated"):
        open_model(ModelRef(repo), hub=_no_cache_hub(hub))


def test_file_list_escaping_folder_is_rejected(hub, repo_id_factory, local_family):
    repo = repo_id_factory()
    hub.create_repo(repo)
    files = {p.name: p.read_bytes() for p in (local_family / "base").iterdir()}
    files["model.safetensors.index.json"] = b'{"weight_map": {"a": "../../etc/passwd"}}'
    hub.commit_files(repo, files)
    with pytest.raises(Exception, match="outside the model folder"):
        open_model(ModelRef(repo), hub=_no_cache_hub(hub))


def test_cached_files_are_read_locally(hub, published, local_family):
    repo, sha = published
    Hub(endpoint=hub.url).download_file(repo, sha, "model.safetensors")
    hub.clear_log()
    remote = open_model(ModelRef(repo, sha), hub=Hub(endpoint=hub.url))
    remote.reader.read(remote.tensors["model.norm.weight"])
    assert hub.bytes_for(repo, "model.safetensors") == 0
    remote.close()

