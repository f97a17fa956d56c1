"""The card a merge writes, from local parents: metadata, license policy, round trip, sections kept."""

from __future__ import annotations

import logging
import re

import pytest
import yaml
from helpers import family

from hubmerge.output.card import BEGIN, END, update_readme
from hubmerge.pipeline.card import card_text, write_card
from hubmerge.pipeline.run import MergeOptions, plan_spec, run_merge
from hubmerge.spec import parse_spec
from hubmerge.spec.cards import config_block
from hubmerge.spec.frontmatter import split_front_matter
from hubmerge.spec.parse import spec_from_dict

SPEC = """
merge_method: ties
base_model: base
models:
  - model: chat
    parameters: {weight: 0.6, density: 0.5}
  - model: math
    parameters:
      weight: [{filter: self_attn, value: [0.2, 0.8]}, {value: 0.4}]
      density: 0.7
parameters: {normalize: true}
dtype: bfloat16
hubmerge: {seed: 3}
"""


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("cardfam")
    family(root)
    return root


def cli(capsys, *args: str):
    """The CLI in-process: (exit code, stdout, stderr)."""
    from hubmerge.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _readme(folder, **meta):
    text = "---\n" + yaml.safe_dump(meta) + "---\n\n# a model\n" if meta else "# a model without metadata\n"
    (folder / "README.md").write_text(text)


def _card(root, spec_text=SPEC, **kwargs):
    plan = plan_spec(parse_spec(spec_text), base_dir=root)
    try:
        return card_text(plan, "sha256:" + "ab" * 32, title="my-merge", **kwargs)
    finally:
        for m in plan.models:
            m.close()


def _meta(card):
    meta, body = split_front_matter(card)
    return meta, body


def _table(body, header):
    """Rows of the Markdown table whose header row starts with ``header``."""
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_metadata_and_round_trip_of_the_recipe(fam):
    for name in ("base", "chat", "math"):
        _readme(fam / name, license="apache-2.0", pipeline_tag="text-generation" if name == "base" else "fill-mask")
    card = _card(fam)
    meta, body = _meta(card)
    assert meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-generation"  # the base's, not another parent's
    assert meta["library_name"] == "transformers"
    assert {"merge", "hubmerge", "ties", "mergekit"} <= set(meta["tags"])
    assert "base_model" not in meta  # local parents are not Hub ids
    # Round trip: the recipe in the front matter and the YAML block in the body both parse to the spec.
    original = parse_spec(SPEC)
    from_meta = spec_from_dict(meta["hubmerge"]["recipe"])
    assert from_meta == original and from_meta.raw == original.raw
    block = re.search(r"## Recipe.*?```yaml\n(.*?)```", body, re.S).group(1)
    assert yaml.safe_load(block) == meta["hubmerge"]["recipe"]
    assert meta["hubmerge"]["content_hash"] == "sha256:" + "ab" * 32
    assert meta["hubmerge"]["dtype"] == "BF16" and meta["hubmerge"]["device"] == "cpu"
    # Body: the method and its paper, sources with their parameters, the reproduce command, usage.
    assert "https://arxiv.org/abs/2306.01708" in body
    rows = {r[0].strip("`"): r for r in _table(body, "| model |")}
    assert set(rows) == {"base", "chat", "math"}
    assert rows["base"][1] == "base" and rows["chat"][4] == "weight=0.6, density=0.5"
    assert "self_attn: [0.2, 0.8]" in rows["math"][4] and "density=0.7" in rows["math"][4]
    assert all(r[3] == "apache-2.0" for r in rows.values())
    assert "hubmerge reproduce" in body and "AutoModelForCausalLM.from_pretrained" in body
    assert body.strip().startswith(BEGIN) and body.strip().endswith(END)
    assert "## License" not in body


@pytest.mark.parametrize("licenses, override, expected, warned", [
    ({"base": "mit", "chat": "mit", "math": "mit"}, None, "mit", False),
    ({"base": "apache-2.0", "chat": "mit", "math": "apache-2.0"}, None, "other", True),
    ({"base": "apache-2.0", "chat": None, "math": "apache-2.0"}, None, "other", True),
    ({"base": "apache-2.0", "chat": "mit", "math": "apache-2.0"}, "cc-by-4.0", "cc-by-4.0", False),
])
def test_license_policy(fam, caplog, licenses, override, expected, warned):
    for name, lic in licenses.items():
        if lic:
            _readme(fam / name, license=lic)
        else:
            _readme(fam / name)
    text = SPEC.replace("hubmerge: {seed: 3}\n", "hubmerge:\n  seed: 3\n")
    text += f"  license: {override}\n" if override else ""
    with caplog.at_level(logging.WARNING, logger="hubmerge"):
        meta, body = _meta(_card(fam, text))
    assert meta["license"] == expected
    assert any("license" in r.getMessage() for r in caplog.records) == warned
    mixed = len({lic for lic in licenses.values()}) > 1
    if mixed:
        rows = dict((r[0].strip("`"), r[1]) for r in _table(body.split("## License", 1)[1], "| parent |"))
        assert rows == {n: (lic or "unknown") for n, lic in licenses.items()}
    else:
        assert "## License" not in body


def test_shared_custom_license_is_inherited_with_its_name(fam):
    for name in ("base", "chat", "math"):
        _readme(fam / name, license="other", license_name="tiny-license", license_link="LICENSE")
    meta, _ = _meta(_card(fam))
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "tiny-license", "LICENSE")
    _readme(fam / "chat", license="other", license_name="another-license", license_link="LICENSE")
    meta, body = _meta(_card(fam))
    assert meta["license"] == "other" and "license_name" not in meta and "## License" in body


def test_existing_readme_keeps_user_prose_and_our_section_is_replaced(fam):
    for name in ("base", "chat", "math"):
        _readme(fam / name, license="apache-2.0")
    first = _card(fam)
    user = first.replace(BEGIN, "Intro written by the owner.\n\n" + BEGIN).rstrip() + "\n\n## Evaluation\n\nMy numbers.\n"
    user = user.replace("library_name: transformers", "library_name: transformers\nlanguage: [en]")
    second = _card(fam, SPEC.replace("weight: 0.6", "weight: 0.25"))
    merged = update_readme(user, second)
    meta, body = _meta(merged)
    assert meta["language"] == ["en"]
    assert "Intro written by the owner." in body and "My numbers." in body
    assert body.count(BEGIN) == 1 and body.count(END) == 1
    assert "weight=0.25" in body and "weight=0.6," not in body
    assert meta["hubmerge"]["recipe"]["models"][0]["parameters"]["weight"] == 0.25
    assert body.index("Intro written") < body.index(BEGIN) < body.index(END) < body.index("My numbers.")


def test_card_command_recomputes_hash_from_a_folder_and_leaves_it_null_for_a_spec(fam, capsys):
    for name in ("base", "chat", "math"):
        _readme(fam / name, license="apache-2.0")
    spec_path = fam / "spec.yml"
    spec_path.write_text(SPEC)
    out = fam / "merged-for-card"
    result = run_merge(parse_spec(SPEC), out, MergeOptions(base_dir=fam, show_progress=False, overwrite=True),
                       card_writer=lambda plan, digest, folder: write_card(plan, digest, folder, title="merged"))
    (out / "README.md").write_text((out / "README.md").read_text().replace(BEGIN, "Owner's intro.\n\n" + BEGIN))
    code, _, err = cli(capsys, "card", str(out), "-q")
    assert code == 0, err
    meta, body = _meta((out / "README.md").read_text())
    assert meta["hubmerge"]["content_hash"] == result.content_hash  # recomputed from the tensors
    assert spec_from_dict(meta["hubmerge"]["recipe"]) == parse_spec(SPEC)
    assert "Owner's intro." in body and body.count(BEGIN) == 1

    # A folder whose card was lost: the recipe comes from mergekit_config.yml (which has no hubmerge: block).
    (out / "README.md").write_text("# just prose, no card\n")
    code, _, err = cli(capsys, "card", str(out), "-q", "--title", "merged")
    assert code == 0, err
    meta, body = _meta((out / "README.md").read_text())
    assert meta["hubmerge"]["content_hash"] == result.content_hash
    assert meta["hubmerge"]["recipe"] == {k: v for k, v in parse_spec(SPEC).raw.items() if k != "hubmerge"}
    assert "just prose, no card" in body and body.count(BEGIN) == 1

    code, out_text, err = cli(capsys, "card", str(spec_path), "-q")
    assert code == 0, err
    meta, _ = _meta(out_text)
    assert meta["hubmerge"]["content_hash"] is None
    assert spec_from_dict(meta["hubmerge"]["recipe"]) == parse_spec(SPEC)


def test_config_block_is_found_in_a_mergekit_style_body():
    body = ("# m\n\n### Models Merged\n\n* a\n\n### Configuration\n\nThe following YAML configuration was used:\n\n"
            "```yaml\nmodels:\n  - model: org/a\nmerge_method: linear\ndtype: float16\n```\n")
    assert config_block(body) == {"models": [{"model": "org/a"}], "merge_method": "linear", "dtype": "float16"}
    assert config_block("# nothing here\n\n```python\nprint(1)\n```\n") is None
