"""`hubmerge push` against the loopback Hub: one atomic commit, nothing half-pushed, no token leaks."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from helpers import TIES_SPEC, assert_same_tensors, family, load_folder, publish_family, run_cli
from safetensors.torch import load as load_safetensors

from hubmerge.errors import HubError
from hubmerge.hub import Hub
from hubmerge.hub.recipes import spec_from_repo
from hubmerge.pipeline.push import push
from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec import parse_spec


@pytest.fixture(scope="module")
def local_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam")
    family(root)
    return root


@pytest.fixture
def upstream(hub, repo_id_factory, local_family):
    """base/chat/math published on the test Hub; returns their repo ids."""
    return publish_family(hub, repo_id_factory, local_family, namespace="upstream")


_weights = iter(range(1, 10_000))


def _hub_spec(upstream, target=None, unique=False):
    """``unique``: a weight no other test uses, so the output's blobs are new to the server."""
    text = TIES_SPEC.format(**upstream)
    if unique:
        text = text.replace("weight: 0.6", f"weight: {0.3 + next(_weights) / 100}")  # distinct even in bf16
    if target:
        text += f"hubmerge:\n  target: {target}\n"
    return parse_spec(text)


def _repo_tensors(hub, repo, rev="main"):
    files = hub.files_at(repo, rev)
    out = {}
    for name, data in files.items():
        if name.endswith(".safetensors"):
            out.update(load_safetensors(data))
    return out


def _client(hub):
    return Hub(endpoint=hub.url, use_cache=False, retry_backoff=0.01)


def test_push_makes_one_commit_equal_to_local_merge(hub, upstream, local_family, repo_id_factory, tmp_path):
    target = repo_id_factory()
    hub.clear_log()
    result = push(_hub_spec(upstream, target), hub=_client(hub), show_progress=False, max_shard_size=150_000)
    assert result.changed and result.commit_url
    commits = hub.list_commits(target)
    assert [c["title"] for c in commits[:-1]] == [commits[0]["title"]]  # one commit on top of the initial one
    files = hub.files_at(target)
    assert {"config.json", "README.md", "tokenizer.json", "model.safetensors.index.json"} <= set(files)

    # Same merge from local folders: bit for bit.
    local_spec = parse_spec(TIES_SPEC.format(base="base", chat="chat", math="math"))
    local = run_merge(local_spec, tmp_path / "local", MergeOptions(base_dir=local_family, show_progress=False))
    assert_same_tensors(_repo_tensors(hub, target), load_folder(local.output))
    assert result.content_hash == local.content_hash

    # Streamed: each upstream weight file served no more than 1.05x the tensor bytes plus its header.
    for name, repo in upstream.items():
        blob = hub.read_file(repo, "model.safetensors")
        header = 8 + int.from_bytes(blob[:8], "little")
        served = hub.bytes_for(repo, "model.safetensors")
        assert served <= 1.05 * (len(blob) - header) + header, (name, served, len(blob))
        gets = [r for r in hub.requests(method="GET") if r.file == (repo, "model.safetensors")]
        assert gets and all(r.status == 206 and r.headers.get("Range") for r in gets)  # ranged, never whole-file

    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == [upstream["base"], upstream["chat"], upstream["math"]]
    assert meta["base_model_relation"] == "merge"
    pinned = meta["hubmerge"]["recipe"]
    assert pinned["base_model"] == f"{upstream['base']}@{hub.head(upstream['base'])}"
    assert meta["hubmerge"]["content_hash"] == result.content_hash


def test_second_push_is_a_no_op(hub, upstream, repo_id_factory):
    target = repo_id_factory()
    spec = _hub_spec(upstream, target)
    push(spec, hub=_client(hub), show_progress=False)
    head = hub.head(target)
    again = push(spec, hub=_client(hub), show_progress=False)
    assert not again.changed and hub.head(target) == head


def test_push_from_readme_recipe_keeps_user_prose(hub, upstream, repo_id_factory):
    target = repo_id_factory()
    hub.create_repo(target)
    recipe = yaml.safe_load(TIES_SPEC.format(**upstream))
    readme = "---\nlicense: mit\ntags: [my-tag]\nhubmerge:\n" + \
        "\n".join("  " + line for line in yaml.safe_dump({"recipe": recipe}).splitlines()) + \
        "\n---\n\n# My model\n\nSome words of mine.\n"
    hub.commit_files(target, {"README.md": readme})
    spec = spec_from_repo(_client(hub), target)
    assert spec.hubmerge.target == target
    proc = run_cli("push", target, "-q", env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    card = hub.read_file(target, "README.md").decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert "Some words of mine." in card and meta["license"] == "mit"
    assert "my-tag" in meta["tags"] and "merge" in meta["tags"]
    assert meta["hubmerge"]["content_hash"].startswith("sha256:")


# Client errors (4xx) fail at once; 5xx are retried by the client first (slow), so one 5xx case is enough.
@pytest.mark.parametrize("fault", [
    dict(status=500, path=r"/commit/", times=10),
    dict(status=422, path=r"/preupload/", times=10),
    dict(status=403, path=r"/info/lfs/objects/batch", times=10),
    dict(status=400, path=r"/lfs-upload/", times=10),
    dict(status=400, path=r"/validate-yaml", times=10),
    dict(drop=1000, path=r"upstream/.*/resolve/.*model.safetensors", times=None),
])
def test_failure_at_any_step_leaves_history_unchanged(hub, upstream, repo_id_factory, fault):
    target = repo_id_factory()
    hub.create_repo(target)
    before = [c["id"] for c in hub.list_commits(target)]
    if "drop" in fault:
        hub.drop_connection(after_bytes=fault["drop"], path=fault["path"], times=fault["times"])
    else:
        hub.fail_requests(**fault)
    with pytest.raises(Exception):
        push(_hub_spec(upstream, target, unique=True), hub=_client(hub), show_progress=False)
    assert [c["id"] for c in hub.list_commits(target)] == before


def test_transient_upload_faults_are_retried(hub, upstream, repo_id_factory):
    target = repo_id_factory()
    hub.fail_requests(503, path=r"/info/lfs/objects/batch", times=1)
    hub.fail_requests(502, path=r"upstream/.*/resolve", times=2)
    result = push(_hub_spec(upstream, target), hub=_client(hub), show_progress=False)
    assert result.changed and hub.files_at(target)["model.safetensors"]


def test_no_write_access_fails_before_merging(hub, upstream, repo_id_factory):
    hub.add_token("hf_readonly_token_000000000000000000", user="tester", role="read")
    target = repo_id_factory()
    hub.create_repo(target)
    hub.clear_log()
    with pytest.raises(HubError, match="permission denied|rejected"):
        push(_hub_spec(upstream, target), hub=Hub(endpoint=hub.url, token="hf_readonly_token_000000000000000000"),
             show_progress=False)
    assert hub.total_bytes_served < 10_000  # no model data was read


def test_moved_branch_gives_repo_changed_error(hub, upstream, repo_id_factory):
    target = repo_id_factory()
    hub.create_repo(target)
    hub.stall(1.0, times=1, path=r"/commit/")

    def move_main_just_before_our_commit():
        # create_commit validates the README first; main moves between that and the (stalled) commit.
        deadline = time.time() + 60
        while time.time() < deadline and not any("validate-yaml" in r.path for r in hub.requests()):
            time.sleep(0.01)
        hub.commit_files(target, {"notes.txt": "someone else"})

    hub.clear_log()
    thread = threading.Thread(target=move_main_just_before_our_commit)
    thread.start()
    with pytest.raises(HubError, match="changed since the merge started"):
        push(_hub_spec(upstream, target), hub=_client(hub), show_progress=False)
    thread.join()
    assert set(hub.files_at(target)) == {".gitattributes", "notes.txt"}


def test_concurrent_pushes_one_wins(hub, upstream, repo_id_factory):
    target = repo_id_factory()
    hub.create_repo(target)
    hub.stall(1.0, times=2, path=r"/commit/")
    specs = [_hub_spec(upstream, target), parse_spec(TIES_SPEC.format(**upstream).replace("0.6", "0.4")
                                                     + f"hubmerge:\n  target: {target}\n")]
    outcomes: list = []

    def run(spec):
        try:
            outcomes.append(push(spec, hub=_client(hub), show_progress=False))
        except HubError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = [o for o in outcomes if not isinstance(o, Exception)]
    losses = [o for o in outcomes if isinstance(o, Exception)]
    assert len(wins) == 1 and len(losses) == 1 and "changed since" in str(losses[0])
    assert len(hub.list_commits(target)) == 2


def test_create_pr_leaves_main_untouched(hub, upstream, repo_id_factory):
    target = repo_id_factory()
    hub.create_repo(target)
    main_before = hub.head(target)
    result = push(_hub_spec(upstream, target), hub=_client(hub), create_pr=True, show_progress=False)
    assert result.pr_url and "/discussions/" in result.pr_url
    assert hub.head(target) == main_before
    assert "model.safetensors" in hub.files_at(target, "refs/pr/1")


def test_token_never_printed_or_committed(hub, upstream, repo_id_factory, tmp_path, hub_token):
    target = repo_id_factory()
    spec = tmp_path / "spec.yml"
    spec.write_text(TIES_SPEC.format(**upstream) + f"hubmerge:\n  target: {target}\n")
    proc = run_cli("push", str(spec), "--debug", env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    assert hub_token not in proc.stdout + proc.stderr
    for data in hub.files_at(target).values():
        assert hub_token.encode() not in data
    assert all(hub_token not in json.dumps(c) for c in hub.list_commits(target))
    bad = run_cli("push", str(spec), "--debug", env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_bad_secret_xyz_0000000000000"})
    assert bad.returncode == 2 and "hf_bad_secret_xyz" not in bad.stdout + bad.stderr


def test_push_says_pushed_once(hub, upstream, repo_id_factory, tmp_path):
    target = repo_id_factory()
    spec = tmp_path / "spec.yml"
    spec.write_text(TIES_SPEC.format(**upstream) + f"hubmerge:\n  target: {target}\n")
    proc = run_cli("push", str(spec), env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    said = (proc.stdout + proc.stderr).splitlines()
    pushed = [line for line in said if "pushed " in line]
    assert len(pushed) == 1 and pushed[0].startswith(f"pushed {target}: ")
    assert hub.list_commits(target)[0]["id"] in pushed[0]
    again = run_cli("push", str(spec), env={"HF_ENDPOINT": hub.url})
    assert again.returncode == 0, again.stderr
    assert len([x for x in (again.stdout + again.stderr).splitlines() if "up to date" in x]) == 1
