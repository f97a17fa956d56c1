"""extract-lora and tokensurgeon recipes on the loopback Hub: inputs pinned and range-read, one atomic push
with an adapter card, then check / sync / reproduce / verify working on the recipe the card records."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import publish_folder
from tools.test_tokensurgeon import DONOR_SPECIALS, DONOR_WORDS, MODEL_SPECIALS, MODEL_WORDS
from tools.tool_models import finetune, lora_family, vocab_model

from hubmerge.cli import main
from hubmerge.hub import Hub
from hubmerge.hub.watch import check
from hubmerge.pipeline.push import push
from hubmerge.pipeline.sync import sync
from hubmerge.pipeline.verify import reproduce, verify
from hubmerge.spec import parse_spec
from hubmerge.spec.frontmatter import split_front_matter

pytest.importorskip("peft")


def _client(hub):
    return Hub(endpoint=hub.url, use_cache=False, retry_backoff=0.01)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool-hub")
    return lora_family(root) | {"root": root}


def _card(hub, repo):
    return split_front_matter(hub.read_file(repo, "README.md").decode())


def test_extract_lora_push_check_sync_reproduce_verify(hub, repo_id_factory, local, tmp_path):
    base_repo, ft_repo, target = repo_id_factory("up"), repo_id_factory("up"), repo_id_factory()
    base_sha = publish_folder(hub, base_repo, local["base"])
    publish_folder(hub, ft_repo, local["ft"])
    recipe = tmp_path / "adapter.yml"
    recipe.write_text(f"extract_lora:\n  model: {ft_repo}\n  base_model: {base_repo}@{base_sha}\n  rank: 4\n"
                      f"hubmerge: {{target: {target}}}\n")
    hub.clear_log()
    assert main(["push", str(recipe), "-q", "--endpoint", hub.url]) == 0  # the CLI, in-process
    files = set(hub.files_at(target)) - {".gitattributes"}
    assert files == {"adapter_model.safetensors", "adapter_config.json", "README.md"}
    ours = [c for c in hub.list_commits(target) if c["title"].startswith("hubmerge")]
    assert len(ours) == 1 and ours[0]["title"].startswith("hubmerge: extract_lora job")
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(ours[0]["files"])
    # inputs read by range requests, never downloaded whole
    weight_gets = [r for r in hub.requests(method="GET") if r.file and r.file[1] == "model.safetensors"]
    assert weight_gets and all(r.headers.get("Range") for r in weight_gets)

    meta, body = _card(hub, target)
    ft_sha = hub.head(ft_repo)
    assert meta["base_model"] == base_repo and meta["base_model_relation"] == "adapter"
    assert meta["library_name"] == "peft"
    pinned = meta["hubmerge"]["recipe"]["extract_lora"]
    assert pinned["model"] == f"{ft_repo}@{ft_sha}" and pinned["base_model"] == f"{base_repo}@{base_sha}"
    assert meta["hubmerge"]["recipe"]["hubmerge"]["track"] == {ft_repo: "main"}
    config = json.loads(hub.read_file(target, "adapter_config.json"))
    assert config["base_model_name_or_path"] == base_repo and config["revision"] == base_sha
    assert "adapter of (base)" in body and ft_repo in body

    client = _client(hub)
    assert not check(client, target).stale
    again = push(parse_spec(recipe.read_text()), hub=client, show_progress=False)
    assert not again.changed  # same weights, same recipe: no commit

    # the fine-tune moves: check says stale, sync re-extracts and commits once
    new_ft = finetune({k: v for k, v in _load(local["ft"]).items()}, seed=99, noise=0.0)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in new_ft.items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    new_sha = hub.commit_files(ft_repo, {"model.safetensors": (tmp_path / "model.safetensors").read_bytes()})
    report = check(client, target)
    assert report.stale and [s.source for s in report.sources if s.changed] == [ft_repo]
    before = len(hub.list_commits(target))
    _, result = sync(client, target, show_progress=False)
    assert result is not None and result.changed and len(hub.list_commits(target)) == before + 1
    meta, _ = _card(hub, target)
    assert meta["hubmerge"]["recipe"]["extract_lora"]["model"] == f"{ft_repo}@{new_sha}"
    assert not check(client, target).stale

    rebuilt, found = reproduce(target, tmp_path / "rebuilt", hub=client, show_progress=False)
    assert found.kind == "hubmerge" and rebuilt.content_hash == meta["hubmerge"]["content_hash"]
    outcome = verify(target, hub=client, show_progress=False)
    assert outcome.ok, outcome.problems()


def _load(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_tokensurgeon_recipe_in_a_readme(hub, repo_id_factory, tmp_path):
    """The recipe lives in the target repo's README; 'hubmerge push <repo>' runs it."""
    model_dir = vocab_model(tmp_path / "model", MODEL_WORDS, seed=3, specials=MODEL_SPECIALS, hidden=128)
    donor_dir = vocab_model(tmp_path / "donor", DONOR_WORDS, seed=4, specials=DONOR_SPECIALS, hidden=128)
    model_repo, donor_repo, target = repo_id_factory("up"), repo_id_factory("up"), repo_id_factory()
    publish_folder(hub, model_repo, model_dir)
    publish_folder(hub, donor_repo, donor_dir)
    recipe = {"tokensurgeon": {"model": model_repo, "donor": donor_repo, "method": "mean"}}
    hub.create_repo(target)
    hub.commit_files(target, {"README.md": "---\n" + yaml.safe_dump({"license": "mit", "hubmerge": {"recipe": recipe}})
                              + "---\n\nMy notes about this model.\n"})
    assert main(["push", target, "-q", "--endpoint", hub.url]) == 0
    files = hub.files_at(target)
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert files["tokenizer.json"] == (donor_dir / "tokenizer.json").read_bytes()
    meta, body = _card(hub, target)
    assert meta["base_model"] == model_repo and meta["base_model_relation"] == "finetune"
    assert meta["license"] == "mit" and "My notes about this model." in body  # the owner's card kept
    assert meta["hubmerge"]["tokensurgeon"]["approximated"] == 30 and "tokenizer donor" in body
    assert meta["hubmerge"]["recipe"]["tokensurgeon"]["donor"].startswith(donor_repo + "@")
