"""hubmerge.spec.bounded: YAML and JSON from untrusted files are refused within budgets, in one line.

Each case checks what is refused against the limit it must name, and that valid documents load exactly as
PyYAML's safe loader / the json module load them (the bounded parsers must not change valid input)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from hubmerge.errors import SourceError, SpecError
from hubmerge.spec import bounded
from hubmerge.spec.bounded import load_json, load_yaml, load_yaml_documents, read_bounded


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        name, prev = chr(97 + i), chr(96 + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * width) + "]")
    return "\n".join(lines) + "\n"


VALID_YAML = [
    "merge_method: ties\nbase_model: base\nmodels:\n  - model: chat\n    parameters: {weight: 0.5, density: 0.6}\n",
    "a: 1\n---\nb: [1, 2.5, .nan, ~, yes, 2020-01-01, -.inf, 0x1f]\n",
    "x: &x {a: 1, b: [1, 2]}\ny: {<<: *x, c: 2}\nz: *x\n",
    "slices:\n" + "".join(f"  - sources: [{{model: m, layer_range: [{i}, {i + 1}]}}]\n" for i in range(500)),
    "",
]


@pytest.mark.parametrize("text", VALID_YAML)
def test_valid_yaml_loads_as_the_safe_loader_does(text):
    ours = load_yaml_documents(text, source="spec.yml")
    theirs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert json.dumps(ours, default=str) == json.dumps(theirs, default=str)


def test_alias_bomb_is_refused_before_it_is_expanded():
    with pytest.raises(SpecError) as err:
        load_yaml(billion_laughs(), source="bomb.yml")
    assert str(err.value).startswith("bomb.yml: ")
    assert f"more than {bounded.MAX_YAML_NODES} YAML nodes (aliases expanded)" in err.value.message


def test_small_alias_use_is_fine():
    doc = load_yaml(billion_laughs(levels=3, width=3), source="s.yml")
    assert len(doc["c"]) == 3 and doc["c"][0][0] == doc["a"]


def test_recursive_alias_is_refused():
    with pytest.raises(SpecError, match=r"s.yml: a\[0\]: alias \*x refers to a node that contains it"):
        load_yaml("a: &x [*x]\n", source="s.yml")


def test_deep_nesting_names_the_limit_and_a_cut_path():
    with pytest.raises(SpecError) as err:  # libyaml's scanner refuses flow nesting past 1000 itself
        load_yaml("[" * 100_000 + "]" * 100_000, source="deep.yml")
    assert err.value.message.startswith("deep.yml: ") and "nesting depth" in err.value.message
    block = "".join(" " * i + "- \n" for i in range(200)) + " " * 200 + "- 1\n"
    with pytest.raises(SpecError) as err:
        load_yaml(block, source="deep.yml")
    assert f"nested deeper than the limit of {bounded.MAX_YAML_DEPTH} levels" in err.value.message
    assert len(err.value.message) < 300


@pytest.mark.parametrize("field,item", [("models", "- model: m\n"), ("slices", "- sources: [{model: m}]\n")])
def test_a_million_entries_name_the_field(field, item):
    text = f"merge_method: linear\n{field}:\n" + item * 1_000_000  # larger than the size limit too
    with pytest.raises(SpecError) as err:
        load_yaml(text, source="big.yml")
    assert err.value.message == f"big.yml: {field}: more than {bounded.MAX_YAML_ITEMS} entries (the limit for one list)"


def test_oversized_text_names_the_size_limit():
    with pytest.raises(SpecError, match=r"^s.yml: larger than the 4 MB limit for a YAML document$"):
        load_yaml("a: " + "x" * (bounded.MAX_YAML_BYTES + 10), source="s.yml")


def test_tags_duplicates_and_nul_are_refused():
    with pytest.raises(SpecError, match="YAML tags like this one are not allowed"):
        load_yaml("a: !!python/object/apply:os.system ['true']\n", source="s.yml")
    with pytest.raises(SpecError, match=r"s.yml: line 2: duplicate key 'a'"):
        load_yaml("a: 1\na: 2\n", source="s.yml")
    with pytest.raises(SpecError, match="contains NUL bytes"):
        load_yaml(b"\0" * 4096, source="s.yml")


def test_error_class_is_the_callers():
    with pytest.raises(SourceError):
        load_yaml("a: 1\na: 2\n", source="card", error=SourceError)


VALID_JSON = ['{"a": [1, 2.5, null, true, "x"], "b": {"c": -3}}', '[]', '{"n": 123456789012345678901234567890}',
              json.dumps({"t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}),
              '{"s": "' + "9" * 5000 + '"}']


@pytest.mark.parametrize("text", VALID_JSON)
def test_valid_json_loads_as_json_does(text):
    assert load_json(text, source="f.json", max_bytes=1 << 20) == json.loads(text)
    assert load_json(text.encode(), source="f.json", max_bytes=1 << 20, unique_keys=True) == json.loads(text)


@pytest.mark.parametrize("levels", [65, 10_000, 100_000])
def test_deep_json_is_refused_in_one_line(levels):
    with pytest.raises(SourceError, match=r"^f.json: nested deeper than the limit of 64 levels$"):
        load_json("[" * levels + "]" * levels, source="f.json", max_bytes=1 << 20)
    with pytest.raises(SourceError, match="nested deeper"):
        load_json('{"a": ' * levels + "1" + "}" * levels, source="f.json", max_bytes=1 << 20)


def test_huge_integers_and_duplicates_are_refused():
    with pytest.raises(SourceError, match=r"^f.json: an integer literal longer than 100 digits$"):
        load_json('{"a": [0, ' + "7" * 5000 + "]}", source="f.json", max_bytes=1 << 20)
    with pytest.raises(SourceError, match=r"f.json: key 'a' appears twice in one object"):
        load_json('{"a": 1, "b": {}, "a": 2}', source="f.json", max_bytes=1 << 20, unique_keys=True)
    assert load_json('{"a": 1, "a": 2}', source="f.json", max_bytes=1 << 20) == {"a": 2}  # as json does
    assert math.isinf(load_json('{"a": 1e999}', source="f.json", max_bytes=1 << 20)["a"])


def test_json_size_and_bad_bytes():
    with pytest.raises(SourceError, match=r"^f.json: larger than the 1 KB limit for this file$"):
        load_json(b" " * 1025, source="f.json", max_bytes=1024)
    with pytest.raises(SourceError, match=r"not valid JSON \(not UTF-8 at byte 0\)"):
        load_json(b"\xff\xfe{}", source="f.json", max_bytes=1024)


def test_read_bounded_stops_at_the_limit(tmp_path):
    with pytest.raises(SourceError, match=r"/dev/zero: larger than the 1 MB limit"):
        read_bounded("/dev/zero", max_bytes=1 << 20)
    (tmp_path / "f").write_bytes(b"abc")
    assert read_bounded(tmp_path / "f", max_bytes=3) == b"abc"
    with pytest.raises(SpecError, match="file not found"):
        read_bounded(tmp_path / "missing", max_bytes=3, error=SpecError)
