"""Lineage without a Hub: reading parents out of cards, walking local folders, the four renderings."""

from __future__ import annotations

import json
import re

import yaml
from helpers import parse_mermaid

from hubmerge.hub.lineage import LineageBuilder
from hubmerge.output.lineage import Lineage, LineageEdge, LineageNode
from hubmerge.spec.cards import CardInfo, card_info, parents_of, recipe_parents


def _card(meta: dict, body: str = "# m\n") -> str:
    return "---\n" + yaml.safe_dump(meta) + "---\n\n" + body




def test_parents_from_each_kind_of_card():
    ours = card_info(_card({"base_model": ["org/ignored"], "hubmerge": {"recipe": {
        "merge_method": "slerp", "base_model": "org/a@" + "1" * 40,
        "slices": [{"sources": [{"model": "org/a@" + "1" * 40, "layer_range": [0, 4]},
                                {"model": "org/b", "layer_range": [0, 4]}]}],
        "parameters": {"t": 0.3}}}}))
    links = parents_of(ours)
    assert [(p.path, p.revision, p.relation) for p in links] == [("org/a", "1" * 40, "merge"), ("org/b", None, "merge")]
    assert "slerp" in links[0].label and "base" in links[0].label and "layers 0-4" in links[1].label

    mergekit = card_info(_card({"base_model": ["org/x", "org/y"], "tags": ["mergekit", "merge"]},
                               "### Configuration\n\n```yaml\nmodels:\n  - model: org/x\n    parameters:\n"
                               "      weight: 0.7\n  - model: org/y\n    parameters:\n      weight: 0.3\n"
                               "merge_method: linear\ndtype: float16\n```\n"))
    assert [(p.path, p.label) for p in parents_of(mergekit)] == [("org/x", "merge (linear, weight=0.7)"),
                                                                 ("org/y", "merge (linear, weight=0.3)")]
    config_only = CardInfo({}, "", ("mergekit_config.yml",),
                           "merge_method: ties\nbase_model: org/base\nmodels:\n  - model: org/ft\n")
    assert [p.path for p in parents_of(config_only)] == ["org/base", "org/ft"]

    finetune = card_info(_card({"base_model": "org/base"}))
    assert [(p.path, p.relation) for p in parents_of(finetune)] == [("org/base", "finetune")]
    declared = card_info(_card({"base_model": "org/base", "base_model_relation": "quantized"}))
    assert parents_of(declared)[0].relation == "quantized"
    assert parents_of(card_info(_card({"base_model": ["org/a", "org/b"]})))[1].relation == "merge"
    assert parents_of(card_info("no front matter at all")) == []
    assert parents_of(card_info("---\n: [broken\n---\nbody")) == []  # bad YAML: no parents, no crash


def test_recipe_parents_merge_mentions_and_keep_order():
    recipe = {"merge_method": "ties", "base_model": {"path": "org/base", "revision": "v1"},
              "models": [{"model": "org/base", "parameters": {"weight": 0.2}},
                         {"model": "./local/ft+org/lora", "parameters": {"weight": 0.8, "density": 0.5}}]}
    parents = recipe_parents(recipe)
    assert [(p.path, p.revision, p.roles) for p in parents] == [("org/base", "v1", ["base", "model"]),
                                                                 ("./local/ft", None, ["model"]),
                                                                 ("org/lora", None, ["adapter"])]
    assert parents[0].describe() == "base, weight=0.2"


def _diamond() -> Lineage:
    lin = Lineage("hub:me/child")
    for key, name, depth in [("hub:me/child", "me/child", 0), ("hub:org/a.b-c", "org/a.b-c", 1),
                             ("hub:org/a_b_c", "org/a_b_c", 1), ("hub:org/base", "org/base", 2)]:
        lin.nodes[key] = LineageNode(key, name, "hub", depth, url=f"https://hub.example/{name}")
    lin.nodes["hub:org/gone"] = LineageNode("hub:org/gone", "org/gone", "hub", 2, status="missing",
                                            note="not found on the Hub", url="https://hub.example/org/gone")
    lin.edges = [LineageEdge("hub:me/child", "hub:org/a.b-c", "merge", 'merge (ties, weight=0.5) "q"'),
                 LineageEdge("hub:me/child", "hub:org/a_b_c", "merge", "merge (ties, base)"),
                 LineageEdge("hub:org/a.b-c", "hub:org/base", "finetune", "finetune"),
                 LineageEdge("hub:org/a_b_c", "hub:org/base", "finetune", "finetune"),
                 LineageEdge("hub:org/a_b_c", "hub:org/gone", "finetune", "finetune")]
    return lin


def test_mermaid_has_sanitized_unique_ids_labelled_edges_and_links():
    lin = _diamond()
    text = lin.to_mermaid()
    assert text.startswith("flowchart TD\n")
    ids = re.findall(r"^\s+(\w+)\(?\[", text, re.M)
    assert len(ids) == len(set(ids)) == 5 and all(re.fullmatch(r"[A-Za-z0-9_]+", i) for i in ids)
    nodes, edges, clicks = parse_mermaid(text)
    assert {(p, c) for p, c, _ in edges} == lin.edge_pairs()
    assert ("org/a.b-c", "me/child", "merge (ties, weight=0.5) #quot;q#quot;") in edges
    assert sorted(clicks.values()) == sorted(n.url for n in lin.nodes.values() if n.url)
    missing_id = next(i for i, label in nodes.items() if label == "org/gone")
    assert re.search(rf"^\s+class .*\b{missing_id}\b.* missing$", text, re.M)


def test_markdown_json_and_dot_carry_the_same_edges():
    lin = _diamond()
    md = lin.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "- **me/child**"
    # every edge appears once as "relation: [parent](url)" under its child; a shared ancestor is not repeated
    assert sum("[org/base](https://hub.example/org/base)" in line for line in lines) == 2
    assert any("org/gone" in line and "not found on the Hub" in line for line in lines)
    assert re.search(r"^  - merge \(ties, base\): \[org/a_b_c\]", md, re.M)
    assert re.search(r"^    - finetune: \[org/base\]", md, re.M)  # nested one level deeper

    doc = json.loads(lin.to_json())
    assert {(e["parent"], e["child"]) for e in doc["edges"]} == lin.edge_pairs()
    assert {n["id"]: n["status"] for n in doc["nodes"]}["org/gone"] == "missing"

    dot = lin.to_dot()
    assert dot.startswith("digraph lineage {")
    pairs = set(re.findall(r'^\s+"([^"]+)" -> "([^"]+)"', dot, re.M))
    assert pairs == lin.edge_pairs()


def test_local_folders_are_walked_through_their_cards(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "README.md").write_text(_card({"license": "mit"}))
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "README.md").write_text(_card({"base_model": "../base"}))
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "mergekit_config.yml").write_text(
        "merge_method: ties\nbase_model: base\nmodels:\n  - model: ft\n    parameters: {weight: 1.0, density: 0.5}\n"
        "  - model: org/not-local\n")
    lin = LineageBuilder(None).from_target(str(tmp_path / "merged"))
    pairs = {(lin.nodes[e.parent].name, lin.nodes[e.child].name, e.relation) for e in lin.edges}
    root = str(tmp_path / "merged")
    assert pairs == {("base", root, "merge"), ("ft", root, "merge"), ("org/not-local", root, "merge"),
                     ("base", "ft", "finetune")}
    # ../base and base are the same folder: one node, reached twice
    assert len({k for k in lin.nodes if k.startswith("local:")}) == 3
    offline = next(n for n in lin.nodes.values() if n.name == "org/not-local")
    assert offline.status == "unexplored" and lin.hub_calls == 0  # no Hub client: not read, not "missing"
    assert LineageBuilder(None, depth=1).from_target(root).edge_pairs() == {
        ("base", root), ("ft", root), ("org/not-local", root)}


def test_lora_adapters_are_parents_of_their_own():
    recipe = {"merge_method": "linear", "models": [
        {"model": "org/base@abc+org/adapter@def", "parameters": {"weight": 0.5}},
        {"model": {"model": "org/other", "lora": "org/adapter2"}, "parameters": {"weight": 0.5}}]}
    parents = recipe_parents(recipe)
    assert [(p.path, p.revision, p.roles) for p in parents] == [
        ("org/base", "abc", ["model"]), ("org/adapter", "def", ["adapter"]),
        ("org/other", None, ["model"]), ("org/adapter2", None, ["adapter"])]
    links = parents_of(card_info(_card({"hubmerge": {"recipe": recipe}})))
    assert [(link.path, link.relation) for link in links] == [("org/base", "merge"), ("org/adapter", "adapter"),
                                                     ("org/other", "merge"), ("org/adapter2", "adapter")]
