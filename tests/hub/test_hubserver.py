"""The loopback Hub (tests/hubserver.py) driven by the *unmodified* huggingface_hub client. No mocks:
every call goes over HTTP to the server started by the `hub_server` session fixture."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import time

import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    hf_hub_url,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, http_backoff

OTHER_TOKEN = "hf_other_reader_token_000000000000000"
CARD = """---
license: apache-2.0
library_name: transformers
tags: [merge]
base_model:
- org/a
- org/b
base_model_relation: merge
---
# A merged model
"""


def safetensors_bytes(tensors: dict[str, list[int]], seed: int = 0) -> bytes:
    """A valid F32 safetensors file with deterministic random contents."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + random.Random(seed).randbytes(offset)


@pytest.fixture(scope="module")
def seeded(hub_server):
    """An upstream model seeded directly on the server: README card, config, a 1 MB LFS shard, a nested file."""
    repo_id = "org/seeded-upstream"
    files = {
        "README.md": CARD.encode(),
        "config.json": b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
        "model.safetensors": safetensors_bytes({"a": [256, 512], "b": [64]}, seed=1),
        "sub/dir/notes.txt": b"hello\n",
    }
    hub_server.create_repo(repo_id, exist_ok=True)
    sha = hub_server.commit_files(repo_id, files, message="seed")
    return repo_id, files, sha


# -- account and repos ---------------------------------------------------------------------------


def test_whoami(hub_api):
    me = hub_api.whoami()
    assert me["name"] == "tester"
    assert me["auth"]["accessToken"]["role"] == "write"


def test_create_repo_and_exist_ok(hub, hub_api, repo_id_factory):
    repo_id = repo_id_factory()
    url = hub_api.create_repo(repo_id)
    assert url.repo_id == repo_id and url.startswith(hub.url)
    with pytest.raises(HfHubHTTPError) as err:
        hub_api.create_repo(repo_id)
    assert err.value.response.status_code == 409
    assert hub_api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    # Like the Hub, a new repo starts with one commit holding .gitattributes.
    assert [c["title"] for c in hub.list_commits(repo_id)] == ["initial commit"]
    hub_api.delete_repo(repo_id)
    assert not hub_api.repo_exists(repo_id)


def test_agent_harnesses_and_xet_routes_are_404(hub, hub_api, seeded):
    session = get_session()
    assert session.get(f"{hub.url}/api/agent-harnesses").status_code == 404
    headers = build_hf_headers(token=os.environ["HF_TOKEN"])
    for kind in ("xet-read-token", "xet-write-token"):
        assert session.get(f"{hub.url}/api/models/{seeded[0]}/{kind}/main", headers=headers).status_code == 404


# -- uploads and commits -------------------------------------------------------------------------


def test_preupload_then_single_commit(hub, hub_api, repo_id_factory, tmp_path):
    repo_id = repo_id_factory()
    hub_api.create_repo(repo_id)
    before = hub.head(repo_id)
    shard = safetensors_bytes({"w": [1024, 2600]}, seed=2)  # ~10.6 MB
    assert len(shard) > 10 * 1024 * 1024
    path = tmp_path / "model.safetensors"
    path.write_bytes(shard)
    op = CommitOperationAdd("model.safetensors", str(path))
    hub_api.preupload_lfs_files(repo_id, additions=[op])
    path.unlink()  # the commit only needs the sha256/size computed during preupload
    info = hub_api.create_commit(
        repo_id,
        [op, CommitOperationAdd("README.md", CARD.encode()), CommitOperationAdd("config.json", b"{}")],
        commit_message="merge upload",
        parent_commit=before,
    )
    commits = hub.list_commits(repo_id)
    assert [c["id"] for c in commits[:2]] == [info.oid, before]
    assert commits[0]["title"] == "merge upload"
    assert hub.read_file(repo_id, "model.safetensors") == shard
    assert hub.is_lfs(repo_id, "model.safetensors") and not hub.is_lfs(repo_id, "config.json")
    # Legacy LFS path: batch -> PUT (no token) -> verify, then exactly one commit POST.
    puts = hub.requests(path=r"^/lfs-upload/", method="PUT")
    assert len(puts) == 1 and not puts[0].auth
    assert len(hub.requests(path=r"/commit/main$", method="POST")) == 1
    assert hub.requests(path=r"/api/validate-yaml$")


def test_unchanged_files_are_skipped(hub, hub_api, seeded):
    repo_id, files, _ = seeded
    # Same content as the remote: preupload reports the remote oid and the client skips the commit.
    head = hub.head(repo_id)
    hub_api.create_commit(repo_id, [CommitOperationAdd("config.json", files["config.json"])], commit_message="noop")
    assert hub.head(repo_id) == head


def test_parent_commit_mismatch_is_412(hub, hub_api, repo_id_factory):
    repo_id = repo_id_factory()
    hub_api.create_repo(repo_id)
    seen = hub.head(repo_id)
    hub.commit_files(repo_id, {"other.txt": b"someone else pushed"}, message="concurrent")
    with pytest.raises(HfHubHTTPError) as err:
        hub_api.create_commit(repo_id, [CommitOperationAdd("a.txt", b"a")], commit_message="mine", parent_commit=seen)
    assert err.value.response.status_code == 412
    assert hub.list_commits(repo_id)[0]["title"] == "concurrent"


def test_create_pr_and_merge_fast_forward(hub, hub_api, repo_id_factory):
    repo_id = repo_id_factory()
    hub_api.create_repo(repo_id)
    main_before = hub.head(repo_id)
    info = hub_api.create_commit(repo_id, [CommitOperationAdd("a.txt", b"a")], commit_message="via PR",
                                 create_pr=True)
    assert info.pr_revision == "refs/pr/1" and info.pr_num == 1
    assert info.pr_url == f"{hub.url}/{repo_id}/discussions/1"
    refs = hub_api.list_repo_refs(repo_id, include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", info.oid)]
    assert hub.head(repo_id) == main_before  # main untouched until merged
    details = hub_api.get_discussion_details(repo_id, 1)
    assert details.is_pull_request and details.target_branch == "refs/heads/main"

    hub_api.merge_pull_request(repo_id, 1)
    commits = hub.list_commits(repo_id)
    assert commits[0]["id"] == info.oid and commits[0]["parent"] == main_before
    assert hub_api.get_discussion_details(repo_id, 1).status == "merged"


def test_merge_pr_after_main_moved_is_one_new_commit(hub, hub_api, repo_id_factory):
    repo_id = repo_id_factory()
    hub_api.create_repo(repo_id)
    start = hub.head(repo_id)
    pr = hub_api.create_commit(repo_id, [CommitOperationAdd("a.txt", b"a")], commit_message="one",
                               create_pr=True, parent_commit=start)
    hub_api.create_commit(repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="two",
                          revision=pr.pr_revision)
    moved = hub.commit_files(repo_id, {"c.txt": b"c"}, message="main moved")

    hub_api.merge_pull_request(repo_id, pr.pr_num)
    commits = hub.list_commits(repo_id)
    assert commits[0]["parent"] == moved  # exactly one commit on top of the moved main
    assert set(hub.files_at(repo_id)) >= {"a.txt", "b.txt", "c.txt"}
    with pytest.raises(HfHubHTTPError):
        hub_api.merge_pull_request(repo_id, pr.pr_num)  # already merged


def test_invalid_card_metadata_is_rejected(hub, hub_api, repo_id_factory):
    repo_id = repo_id_factory()
    hub_api.create_repo(repo_id)
    head = hub.head(repo_id)
    bad_cards = [
        "---\nbase_model: org/a\nbase_model_relation: blend\n---\n",  # unknown relation
        "---\n- just\n- a list\n---\n",  # front matter must be a mapping
        "---\nkey: [unclosed\n---\n",  # invalid YAML
    ]
    for card in bad_cards:
        with pytest.raises(ValueError, match="Invalid metadata in README.md"):
            hub_api.create_commit(repo_id, [CommitOperationAdd("README.md", card.encode())], commit_message="card")
    assert hub.head(repo_id) == head


def test_delete_operations(hub, hub_api, repo_id_factory):
    repo_id = repo_id_factory()
    hub.create_repo(repo_id)
    hub.commit_files(repo_id, {"keep.txt": b"k", "dir/a.txt": b"a", "dir/b.txt": b"b"})
    hub_api.create_commit(repo_id, [CommitOperationDelete("dir/")], commit_message="rm dir")
    assert set(hub.files_at(repo_id)) == {".gitattributes", "keep.txt"}
    with pytest.raises(RemoteEntryNotFoundError):
        hub_api.create_commit(repo_id, [CommitOperationDelete("missing.txt")], commit_message="rm")


def test_branches_tags_and_on_commit_hook(hub, hub_api, repo_id_factory):
    repo_id = repo_id_factory()
    hub_api.create_repo(repo_id)
    events = []
    hub.on_commit = events.append
    hub_api.create_branch(repo_id, branch="dev")
    hub_api.create_tag(repo_id, tag="v1", revision="main")
    with pytest.raises(HfHubHTTPError) as err:
        hub_api.create_branch(repo_id, branch="dev")
    assert err.value.response.status_code == 409
    info = hub_api.create_commit(repo_id, [CommitOperationAdd("x.txt", b"x")], commit_message="on dev",
                                 revision="dev")
    refs = hub_api.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches}["dev"] == info.oid
    assert [t.name for t in refs.tags] == ["v1"]
    assert events == [{"repo_id": repo_id, "repo_type": "model", "ref": "refs/heads/dev",
                       "old_sha": hub.list_commits(repo_id, "dev")[1]["id"], "new_sha": info.oid, "title": "on dev"}]


# -- metadata ------------------------------------------------------------------------------------


def test_model_info_and_resolve_revision(hub_api, seeded):
    repo_id, files, sha = seeded
    info = hub_api.model_info(repo_id, files_metadata=True)
    assert info.sha == sha
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(files) | {".gitattributes"}
    assert siblings["model.safetensors"].size == len(files["model.safetensors"])
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert siblings["config.json"].lfs is None
    assert info.card_data.base_model == ["org/a", "org/b"]
    assert info.card_data.base_model_relation == "merge"
    assert "base_model:merge:org/a" in info.tags
    assert info.safetensors.total == 256 * 512 + 64
    resolved = hub_api.resolve_revision(repo_id, revision="main")
    assert resolved.resolved == sha
    assert hub_api.model_info(repo_id, revision=sha[:10]).sha == sha
    assert hub_api.model_info(repo_id, expand=["sha", "baseModels"]).base_models["relation"] == "merge"
    with pytest.raises(RevisionNotFoundError):
        hub_api.model_info(repo_id, revision="no-such-branch")


def test_commits_refs_tree_files(hub, hub_api, seeded, monkeypatch):
    repo_id, files, sha = seeded
    commits = hub_api.list_repo_commits(repo_id, formatted=True)
    assert commits[0].commit_id == sha and commits[0].title == "seed" and commits[0].authors == ["tester"]
    assert commits[-1].title == "initial commit"
    monkeypatch.setattr(hub, "page_size", 1)  # the client follows Link: rel="next"
    assert [c.commit_id for c in hub_api.list_repo_commits(repo_id)] == [c.commit_id for c in commits]
    monkeypatch.undo()

    assert set(hub_api.list_repo_files(repo_id)) == set(files) | {".gitattributes"}
    top = {e.path: type(e).__name__ for e in hub_api.list_repo_tree(repo_id)}
    assert top["sub"] == "RepoFolder" and top["config.json"] == "RepoFile" and "sub/dir/notes.txt" not in top
    nested = list(hub_api.list_repo_tree(repo_id, path_in_repo="sub", recursive=True, expand=True))
    assert {e.path for e in nested} == {"sub/dir", "sub/dir/notes.txt"}
    assert all(e.last_commit.oid == sha for e in nested)
    paths = hub_api.get_paths_info(repo_id, ["model.safetensors", "sub", "missing"], revision=sha)
    assert {p.path for p in paths} == {"model.safetensors", "sub"}
    assert hub_api.file_exists(repo_id, "sub/dir/notes.txt") and not hub_api.file_exists(repo_id, "nope.txt")


def test_list_models_by_derived_base_model_tag(hub, hub_api, seeded, repo_id_factory):
    child = repo_id_factory("org")
    hub.commit_files(child, {"README.md": "---\nbase_model: [org/a, org/c]\n---\n"})  # relation inferred: merge
    finetune = repo_id_factory("org")
    hub.commit_files(finetune, {"README.md": "---\nbase_model: org/a\n---\n"})  # inferred: finetune
    found = {m.id for m in hub_api.list_models(filter="base_model:merge:org/a")}
    assert {seeded[0], child} <= found and finetune not in found
    assert finetune in {m.id for m in hub_api.list_models(filter="base_model:finetune:org/a", author="org")}
    assert [m.id for m in hub_api.list_models(search=child.split("/")[1])] == [child]


# -- downloads -----------------------------------------------------------------------------------


def test_hf_hub_download_at_sha_and_main(hub, hub_api, seeded, tmp_path):
    repo_id, files, sha = seeded
    path = hub_api.hf_hub_download(repo_id, "model.safetensors", revision=sha)
    assert open(path, "rb").read() == files["model.safetensors"]
    path = hf_hub_download(repo_id, "sub/dir/notes.txt", endpoint=hub.url, cache_dir=tmp_path)
    assert open(path, "rb").read() == files["sub/dir/notes.txt"]
    assert f"/snapshots/{sha}/" in path
    with pytest.raises(RemoteEntryNotFoundError):
        hub_api.hf_hub_download(repo_id, "missing.bin", revision=sha)


def test_snapshot_download_allow_patterns(hub, hub_api, seeded, tmp_path):
    repo_id, files, sha = seeded
    folder = hub_api.snapshot_download(repo_id, allow_patterns=["*.json", "*.md"], cache_dir=tmp_path)
    got = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
    assert got == ["README.md", "config.json"]
    assert hub.bytes_for(repo_id, "model.safetensors") == 0


def test_raw_range_requests(hub, seeded):
    repo_id, files, sha = seeded
    data = files["model.safetensors"]
    url = hf_hub_url(repo_id, "model.safetensors", revision=sha, endpoint=hub.url)
    session, headers = get_session(), build_hf_headers(token=os.environ["HF_TOKEN"])
    for spec, expected, start in (("100-199", data[100:200], 100), ("-16", data[-16:], len(data) - 16),
                                  (f"{len(data) - 5}-", data[-5:], len(data) - 5)):
        r = session.get(url, headers={**headers, "Range": f"bytes={spec}"})
        assert r.status_code == 206 and r.content == expected
        assert r.headers["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
    r = session.get(url, headers={**headers, "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
    assert [e.status for e in hub.requests(path=r"/resolve/")] == [206, 206, 206, 416]
    assert hub.bytes_for(repo_id, "model.safetensors") == 100 + 16 + 5


def test_get_safetensors_metadata(hub_api, seeded):
    meta = hub_api.get_safetensors_metadata(seeded[0], revision=seeded[2])
    tensors = meta.files_metadata["model.safetensors"].tensors
    assert tensors["a"].shape == [256, 512] and tensors["b"].dtype == "F32"


def test_hf_file_system_range_read_is_bounded(hub, seeded):
    repo_id, files, sha = seeded
    data = files["model.safetensors"]
    fs = HfFileSystem(endpoint=hub.url, token=os.environ["HF_TOKEN"], skip_instance_cache=True)
    with fs.open(f"{repo_id}@{sha}/model.safetensors", "rb", block_size=4096, cache_type="none") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        begin, _ = header["b"]["data_offsets"]
        f.seek(8 + n + begin)
        assert f.read(16) == data[8 + n + begin : 8 + n + begin + 16]
    assert hub.bytes_for(repo_id, "model.safetensors") == 8 + n + 16
    assert all(e.status == 206 for e in hub.requests(path=r"/resolve/"))


def test_cross_origin_redirect_strips_token(hub, hub_api, seeded, tmp_path):
    repo_id, files, sha = seeded
    hub.enable_cdn_redirect("lfs")
    path = hub_api.hf_hub_download(repo_id, "model.safetensors", revision=sha, cache_dir=tmp_path)
    assert open(path, "rb").read() == files["model.safetensors"]
    url = hf_hub_url(repo_id, "model.safetensors", revision=sha, endpoint=hub.url)
    r = get_session().get(url, headers={**build_hf_headers(token=os.environ["HF_TOKEN"]), "Range": "bytes=0-7"})
    assert r.status_code == 206 and r.content == files["model.safetensors"][:8]

    resolves = hub.requests(path=r"/resolve/")
    assert resolves and all(e.status == 302 and e.auth for e in resolves)
    cdn = hub.requests(path=r"^/cdn/")
    assert len(cdn) == 2 and all(e.host.startswith("localhost:") for e in cdn)
    assert not any(e.auth for e in cdn), "the client forwarded Authorization to another origin"


def test_ignore_range_knob(hub, seeded):
    repo_id, files, sha = seeded
    hub.ignore_range(path=r"model\.safetensors")
    url = hf_hub_url(repo_id, "model.safetensors", revision=sha, endpoint=hub.url)
    r = get_session().get(url, headers={"Range": "bytes=0-7"})
    assert r.status_code == 200 and r.content == files["model.safetensors"]


# -- faults --------------------------------------------------------------------------------------


def test_injected_503_then_success_with_http_backoff(hub, seeded):
    repo_id = seeded[0]
    hub.fail_requests(503, times=2, path=r"/api/models/.*/refs$", method="GET")
    r = http_backoff("GET", f"{hub.url}/api/models/{repo_id}/refs", base_wait_time=0.01, max_wait_time=0.02)
    assert r.status_code == 200 and "branches" in r.json()
    assert [e.status for e in hub.requests(path=r"/refs$")] == [503, 503, 200]


def test_injected_429_carries_rate_limit_headers(hub, hub_api, seeded):
    hub.fail_requests(429, retry_after=7, path=r"/api/models/.*/refs$")
    r = get_session().get(f"{hub.url}/api/models/{seeded[0]}/refs")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7" and r.headers["RateLimit"] == '"api";r=0;t=7'
    assert hub_api.list_repo_refs(seeded[0]).branches  # the fault was used up


def test_drop_connection_mid_body(hub, seeded):
    repo_id, files, sha = seeded
    hub.drop_connection(after_bytes=1000, path=r"model\.safetensors")
    url = hf_hub_url(repo_id, "model.safetensors", revision=sha, endpoint=hub.url)
    with pytest.raises(httpx2.TransportError):
        get_session().get(url)
    assert hub.bytes_for(repo_id, "model.safetensors") == 1000
    assert get_session().get(url).content == files["model.safetensors"]  # one-shot fault


def test_download_resumes_with_range_after_drop(hub, hub_api, repo_id_factory, tmp_path):
    repo_id = repo_id_factory()
    data = random.Random(3).randbytes(12_000_000)
    hub.commit_files(repo_id, {"model.safetensors": data})
    # The client buffers 10 MiB chunks, so only a drop after the first full chunk is resumed with Range.
    hub.drop_connection(after_bytes=11_000_000, path=r"model\.safetensors")
    path = hub_api.hf_hub_download(repo_id, "model.safetensors", cache_dir=tmp_path)
    assert open(path, "rb").read() == data
    gets = hub.requests(path=r"/resolve/", method="GET")
    assert [(g.status, g.range) for g in gets] == [(200, None), (206, f"bytes={10 * 1024 * 1024}-")]
    assert gets[0].bytes_sent == 11_000_000


def test_stall_knob_triggers_client_timeout(hub, seeded):
    hub.stall(0.5, path=r"/refs$")
    with pytest.raises(httpx2.TimeoutException):
        get_session().get(f"{hub.url}/api/models/{seeded[0]}/refs", timeout=0.1)
    deadline = time.monotonic() + 5  # let the stalled handler finish so it doesn't log into the next test
    while not hub.requests(path=r"/refs$") and time.monotonic() < deadline:
        time.sleep(0.05)


# -- auth, private and gated repos ---------------------------------------------------------------


def test_wrong_token_is_rejected(hub, seeded):
    bad = HfApi(endpoint=hub.url, token="hf_wrong_token_0000000000000000000")
    with pytest.raises(HfHubHTTPError) as err:
        bad.model_info(seeded[0])
    assert err.value.response.status_code == 401 and not isinstance(err.value, RepositoryNotFoundError)
    with pytest.raises(HfHubHTTPError):
        bad.whoami()
    first = hub.requests(path=r"^/api/models/")[0]
    assert first.auth and first.auth_valid is False and first.status == 401
    assert all("hf_wrong" not in repr(e) for e in hub.log)  # tokens never reach the log


def test_read_only_token(hub, seeded):
    hub.add_token(OTHER_TOKEN, user="other", role="read")
    reader = HfApi(endpoint=hub.url, token=OTHER_TOKEN)
    reader.auth_check(seeded[0])
    with pytest.raises(HfHubHTTPError) as err:
        reader.auth_check(seeded[0], write=True)
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        reader.create_commit(seeded[0], [CommitOperationAdd("x.txt", b"x")], commit_message="nope")
    assert err.value.response.status_code == 403


def test_private_repo_visibility(hub, hub_api, repo_id_factory):
    repo_id = repo_id_factory()
    hub_api.create_repo(repo_id, private=True)
    hub.commit_files(repo_id, {"config.json": b"{}"})
    assert hub_api.model_info(repo_id).private is True
    hub.add_token(OTHER_TOKEN, user="other", role="read")
    for api in (HfApi(endpoint=hub.url, token=False), HfApi(endpoint=hub.url, token=OTHER_TOKEN)):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info(repo_id)
        with pytest.raises(RepositoryNotFoundError):
            api.hf_hub_download(repo_id, "config.json")
        assert repo_id not in {m.id for m in api.list_models(author=repo_id.split("/")[0])}


def test_gated_repo(hub, repo_id_factory, tmp_path):
    repo_id = repo_id_factory("org")
    hub.create_repo(repo_id, gated=True)
    hub.commit_files(repo_id, {"config.json": b"{}"})
    hub.add_token(OTHER_TOKEN, user="other", role="read")
    other = HfApi(endpoint=hub.url, token=OTHER_TOKEN)
    assert other.model_info(repo_id).gated == "manual"  # metadata stays visible
    for api in (other, HfApi(endpoint=hub.url, token=False)):
        with pytest.raises(GatedRepoError):
            api.hf_hub_download(repo_id, "config.json", cache_dir=tmp_path)
    with pytest.raises(GatedRepoError):
        other.auth_check(repo_id)
    hub.grant_access(repo_id, "other")
    assert open(other.hf_hub_download(repo_id, "config.json", cache_dir=tmp_path), "rb").read() == b"{}"


def test_transformers_auto_config(hub, seeded):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(seeded[0], revision=seeded[2])
    assert config.model_type == "llama"
    assert hub.requests(path=r"/resolve/[0-9a-f]{40}/config\.json$")


def test_dataset_repo_roundtrip(hub, hub_api, repo_id_factory, tmp_path):
    repo_id = repo_id_factory()
    hub_api.create_repo(repo_id, repo_type="dataset")
    hub_api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data.csv", repo_id=repo_id, repo_type="dataset")
    assert hub_api.dataset_info(repo_id).sha == hub.head(repo_id, repo_type="dataset")
    path = hub_api.hf_hub_download(repo_id, "data.csv", repo_type="dataset", cache_dir=tmp_path)
    assert open(path, "rb").read() == b"a,b\n1,2\n"
