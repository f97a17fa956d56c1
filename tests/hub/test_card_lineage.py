"""Cards, lineage, reproduce and verify against the loopback Hub.

The module builds one three-generation family on the test Hub:
  base  <- chat, math, code            fine-tunes (cards: base_model + licenses)
  gen2a = ties(base; chat, math)       pushed by hubmerge (our card, pinned recipe)
  gen2b = ties(base; math, code)       published with a card written the way mergekit 0.1.5 writes one
  gen3  = linear(gen2a, gen2b)         pushed by hubmerge: a merge of merges
"""

from __future__ import annotations

import json
import re
import struct

import pytest
import yaml
from helpers import TIES_SPEC, assert_same_tensors, family, load_folder, parse_mermaid, publish_folder, run_cli

from hubmerge.errors import HubError
from hubmerge.hub import Hub
from hubmerge.hub.lineage import LineageBuilder, _CardCache, lineage_of
from hubmerge.pipeline.push import push
from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.pipeline.verify import reproduce, verify
from hubmerge.spec import parse_spec
from hubmerge.spec.frontmatter import split_front_matter
from hubmerge.spec.parse import spec_from_dict

GEN2B = """merge_method: ties
base_model: {base}
models:
  - model: {math}
    parameters:
      weight: 0.5
      density: 0.6
  - model: {code}
    parameters:
      weight: 0.5
      density: 0.4
dtype: bfloat16
"""

GEN3 = """
merge_method: linear
models:
  - model: {gen2a}
    parameters: {{weight: 0.5}}
  - model: {gen2b}
    parameters: {{weight: 0.5}}
dtype: bfloat16
"""


def mergekit_style_card(name: str, config_yaml: str, hub_ids: list[str], base: str, others: list[str]) -> str:
    """A README laid out like mergekit 0.1.5's generated card (front matter by yaml.dump, sorted keys)."""
    meta = yaml.dump({"base_model": hub_ids, "tags": ["mergekit", "merge"], "library_name": "transformers"})
    models = "\n".join(f"* [{m}](https://huggingface.co/{m})" for m in others)
    return (f"---\n{meta}\n---\n# {name}\n\nThis is a merge of pre-trained language models created using "
            f"[mergekit](https://github.com/cg123/mergekit).\n\n## Merge Details\n### Merge Method\n\n"
            f"This model was merged using the [TIES](https://arxiv.org/abs/2306.01708) merge method using "
            f"[{base}](https://huggingface.co/{base}) as a base.\n\n### Models Merged\n\nThe following models were "
            f"included in the merge:\n{models}\n\n### Configuration\n\nThe following YAML configuration was used to "
            f"produce this model:\n\n```yaml\n{config_yaml}\n```\n")




def cli(capsys, *args: str):
    """The CLI in-process (a subprocess would pay torch's import each time): (exit code, stdout, stderr)."""
    from hubmerge.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _client(hub):
    return Hub(endpoint=hub.url, use_cache=False, retry_backoff=0.01)


def _meta(text: str) -> tuple[dict, str]:
    return split_front_matter(text)


@pytest.fixture(scope="module")
def local_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage-fam")
    family(root)
    return root


@pytest.fixture(scope="module")
def tree(hub_server, local_family, tmp_path_factory):
    """The three generations on the test Hub; returns their repo ids (+ the local gen2b output)."""
    hub = hub_server
    ids = {name: f"{hub.user}/lineage-{name}" for name in ("base", "chat", "math", "code", "gen2a", "gen2b", "gen3")}
    for name in ("base", "chat", "math", "code"):
        folder = local_family / name
        meta = {"license": "apache-2.0"}
        if name == "base":
            meta["pipeline_tag"] = "text-generation"
        else:
            meta["base_model"] = ids["base"]
        (folder / "README.md").write_text("---\n" + yaml.safe_dump(meta) + f"---\n\n# {name}\n")
        hub.create_repo(ids[name], exist_ok=True)
        publish_folder(hub, ids[name], folder)

    client = _client(hub)
    text_a = TIES_SPEC.format(**ids) + f"hubmerge:\n  target: {ids['gen2a']}\n"
    push(parse_spec(text_a), hub=client, show_progress=False, max_shard_size=120_000)

    # gen2b: merged locally from the same weights, published with a mergekit-style card and config.
    config_b = GEN2B.format(**ids)
    local_b = tmp_path_factory.mktemp("gen2b") / "gen2b"
    run_merge(parse_spec(GEN2B.format(base="base", math="math", code="code")), local_b,
              MergeOptions(base_dir=local_family, show_progress=False))
    (local_b / "README.md").write_text(mergekit_style_card(
        "gen2b", config_b.rstrip(), [ids["base"], ids["math"], ids["code"]], ids["base"], [ids["math"], ids["code"]]))
    (local_b / "mergekit_config.yml").write_text(config_b)
    hub.create_repo(ids["gen2b"], exist_ok=True)
    publish_folder(hub, ids["gen2b"], local_b)

    text_3 = GEN3.format(**ids) + f"hubmerge:\n  target: {ids['gen3']}\n"
    push(parse_spec(text_3), hub=client, show_progress=False)
    return {**ids, "local_gen2b": local_b}


def expected_edges(ids):
    names = [("gen2a", "gen3"), ("gen2b", "gen3"), ("base", "gen2a"), ("chat", "gen2a"), ("math", "gen2a"),
             ("base", "gen2b"), ("math", "gen2b"), ("code", "gen2b"),
             ("base", "chat"), ("base", "math"), ("base", "code")]
    return {(ids[p], ids[c]) for p, c in names}


def test_our_card_metadata_round_trips_and_passes_validate_yaml(hub, hub_api, tree, repo_id_factory):
    card = hub.read_file(tree["gen2a"], "README.md").decode()
    meta, body = _meta(card)
    assert meta["base_model"] == [tree["base"], tree["chat"], tree["math"]]
    assert meta["base_model_relation"] == "merge"
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert {"merge", "mergekit", "hubmerge", "ties"} <= set(meta["tags"])
    # Round trip: the card's recipe is the spec with every source pinned to the SHA it was merged from.
    pins = {tree[n]: hub.head(tree[n]) for n in ("base", "chat", "math")}
    recipe = meta["hubmerge"]["recipe"]
    expected = yaml.safe_load(TIES_SPEC.format(**{n: f"{tree[n]}@{pins[tree[n]]}" for n in ("base", "chat", "math")}))
    expected["hubmerge"] = {"target": tree["gen2a"], "track": {tree[n]: "main" for n in ("base", "chat", "math")}}
    assert recipe == expected
    assert spec_from_dict(recipe) == spec_from_dict(expected)
    # Sources linked at their pinned revisions on this endpoint.
    for repo, sha in pins.items():
        assert f"[{repo}]({hub.url}/{repo}/tree/{sha})" in body
    assert f"hubmerge reproduce {tree['gen2a']}" in body

    # The Hub's validate-yaml accepts it (create_commit runs it first), including a mixed-license card.
    mixed = card.replace("license: apache-2.0", "license: other")
    target = repo_id_factory()
    hub_api.create_repo(target)
    hub.clear_log()
    hub_api.create_commit(target, [_add("README.md", mixed)], commit_message="card")
    assert [r.status for r in hub.requests(path="/api/validate-yaml")] == [200]
    assert hub.read_file(target, "README.md").decode() == mixed


def _add(path, text):
    from huggingface_hub import CommitOperationAdd

    return CommitOperationAdd(path_in_repo=path, path_or_fileobj=text.encode())


def test_three_generations_render_the_expected_graph(hub, tree):
    lineage = lineage_of(tree["gen3"], hub=_client(hub))
    assert lineage.edge_pairs() == expected_edges(tree)
    labels = {(lineage.nodes[e.parent].name, lineage.nodes[e.child].name): (e.relation, e.label)
              for e in lineage.edges}
    assert labels[(tree["gen2a"], tree["gen3"])] == ("merge", "merge (linear, weight=0.5)")
    assert labels[(tree["base"], tree["gen2b"])] == ("merge", "merge (ties, base)")  # from the mergekit block
    assert labels[(tree["code"], tree["gen2b"])][1] == "merge (ties, weight=0.5)"
    assert labels[(tree["base"], tree["chat"])][0] == "finetune"
    assert all(n.status == "ok" for n in lineage.nodes.values())

    # The card pushed for gen3 embeds the same graph (Mermaid) and the same edges in its list.
    _, body = _meta(hub.read_file(tree["gen3"], "README.md").decode())
    mermaid = re.search(r"```mermaid\n(.*?)```", body, re.S).group(1)
    nodes, edges, clicks = parse_mermaid(mermaid)
    assert {(p, c) for p, c, _ in edges} == expected_edges(tree)
    assert {clicks[i] for i, label in nodes.items() if label == tree["base"]} == {f"{hub.url}/{tree['base']}"}
    listing = body.split("```mermaid", 1)[1].split("## Recipe", 1)[0]
    for name in ("gen2a", "gen2b", "base", "chat", "math", "code"):
        assert f"[{tree[name]}]({hub.url}/{tree[name]})" in listing

    # Depth bounds the walk; the CLI prints the same graph as JSON.
    assert lineage_of(tree["gen3"], hub=_client(hub), depth=1).edge_pairs() == {
        (tree["gen2a"], tree["gen3"]), (tree["gen2b"], tree["gen3"])}
    proc = run_cli("lineage", tree["gen3"], "--format", "json", env={"HF_ENDPOINT": hub.url})
    assert proc.returncode == 0, proc.stderr
    assert {(e["parent"], e["child"]) for e in json.loads(proc.stdout)["edges"]} == expected_edges(tree)


def test_call_budget_and_cache(hub, tree):
    cache = _CardCache()
    first = LineageBuilder(_client(hub), cache=cache).from_target(tree["gen3"])
    again = LineageBuilder(_client(hub), cache=cache).from_target(tree["gen3"])
    assert again.edge_pairs() == first.edge_pairs()
    assert again.hub_calls < first.hub_calls  # pinned parents come from the cache
    small = LineageBuilder(_client(hub), max_calls=4, cache=_CardCache()).from_target(tree["gen3"])
    assert small.hub_calls <= 4
    assert any(n.status == "unexplored" for n in small.nodes.values())
    assert (tree["gen2a"], tree["gen3"]) in small.edge_pairs()


def test_cycle_and_missing_parent_are_shown_not_fatal(hub, repo_id_factory, capsys):
    x, y, gone = repo_id_factory(), repo_id_factory(), repo_id_factory("nobody")
    hub.commit_files(x, {"README.md": f"---\nbase_model: {y}\n---\n# x\n"})
    hub.commit_files(y, {"README.md": f"---\nbase_model:\n- {x}\n- {gone}\n---\n# y\n"})
    lineage = lineage_of(x, hub=_client(hub))
    assert lineage.edge_pairs() == {(y, x), (x, y), (gone, y)}
    assert [(lineage.nodes[e.parent].name, lineage.nodes[e.child].name) for e in lineage.edges if e.cycle] == [(x, y)]
    missing = [n for n in lineage.nodes.values() if n.status != "ok"]
    assert [(n.name, n.status) for n in missing] == [(gone, "missing")]
    assert lineage.hub_calls <= 6
    nodes, edges, _ = parse_mermaid(lineage.to_mermaid())
    assert {(p, c) for p, c, _ in edges} == lineage.edge_pairs()
    assert "not found" in lineage.to_markdown()
    # Asking for a repo that does not exist at all is an error, with the CLI's usual exit code.
    with pytest.raises(HubError, match="not found"):
        lineage_of(gone, hub=_client(hub))
    code, _, err = cli(capsys, "lineage", gone, "-q")
    assert code == 2 and err.startswith("error:") and "not found" in err


def test_mergekit_card_is_reproduced_bit_for_bit(hub, tree, local_family, tmp_path, repo_id_factory, capsys):
    local = run_merge(parse_spec(GEN2B.format(base="base", math="math", code="code")), tmp_path / "local",
                      MergeOptions(base_dir=local_family, show_progress=False))
    code, out, err = cli(capsys, "reproduce", tree["gen2b"], "-o", str(tmp_path / "from-card"), "-q")
    assert code == 0, err
    assert "mergekit card" in out and local.content_hash in out
    assert_same_tensors(load_folder(tmp_path / "from-card"), load_folder(local.output))

    # A repo with only mergekit_config.yml (its README has no Configuration block).
    only_config = repo_id_factory()
    files = {p.name: p.read_bytes() for p in tree["local_gen2b"].iterdir() if p.is_file()}
    files["README.md"] = b"# a merge\n\nNo recipe in here.\n"
    hub.commit_files(only_config, files)
    result, recipe = reproduce(only_config, tmp_path / "from-config", hub=_client(hub), show_progress=False)
    assert recipe.kind == "mergekit_config.yml" and result.content_hash == local.content_hash

    # Our own card reproduces to the hash it records.
    result, recipe = reproduce(tree["gen2a"], tmp_path / "gen2a", hub=_client(hub), show_progress=False)
    assert recipe.kind == "hubmerge" and result.content_hash == recipe.recorded["content_hash"]


def _tamper(blob: bytes) -> tuple[bytes, str]:
    """Flip one bit of the first tensor (by data offset) of a safetensors file; returns (new blob, its name)."""
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    name, info = min(((k, v) for k, v in header.items() if k != "__metadata__"),
                     key=lambda kv: kv[1]["data_offsets"][0])
    at = 8 + n + info["data_offsets"][0]
    data = bytearray(blob)
    data[at] ^= 0x01
    return bytes(data), name


def test_verify_passes_untouched_and_names_tampered_tensors(hub, tree, repo_id_factory, capsys):
    target = repo_id_factory()
    spec = parse_spec(TIES_SPEC.format(**tree).replace("weight: 0.6", "weight: 0.55") + f"hubmerge:\n  target: {target}\n")
    push(spec, hub=_client(hub), show_progress=False, max_shard_size=120_000)
    shards = sorted(p for p in hub.files_at(target) if p.endswith(".safetensors"))
    assert len(shards) > 1

    check = verify(target, hub=_client(hub), show_progress=False)
    assert check.ok and not check.differing
    code, out, err = cli(capsys, "verify", target, "-q")
    assert code == 0, err
    assert out.startswith("verified")

    tampered, name = _tamper(hub.read_file(target, shards[1]))
    hub.commit_files(target, {shards[1]: tampered}, message="tamper")
    check = verify(target, hub=_client(hub), show_progress=False)
    assert not check.ok
    assert check.differing == [name] and not check.missing and not check.extra
    assert check.remerged == check.recorded != check.published
    code, out, _ = cli(capsys, "verify", target, "-q")
    assert code == 1
    assert "NOT verified" in out and name in out

    # A mergekit card carries no content hash: verify says so and points to reproduce.
    code, _, err = cli(capsys, "verify", tree["gen2b"], "-q")
    assert code == 2 and err.startswith("error:") and "hubmerge reproduce" in err
