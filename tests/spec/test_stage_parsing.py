"""Multi-document specs: stage order, names, and the errors a user can act on."""

import pytest

from hubmerge.errors import SpecError
from hubmerge.spec.stages import parse_stages

LINEAR = "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1}}\n  - model: {b}\n    parameters: {{weight: 1}}\n"


def doc(name, a, b):
    return (f"name: {name}\n" if name else "") + LINEAR.format(a=a, b=b)


def test_single_document_is_one_stage():
    [stage] = parse_stages(LINEAR.format(a="x", b="y"))
    assert stage.needs == () and stage.spec.merge_method == "linear"


def test_stages_run_after_the_stages_they_use_and_keep_file_order_otherwise():
    text = "---\n".join([doc("final", "left", "right"), doc("left", "m1", "m2"), doc("right", "left", "m3")])
    stages = parse_stages(text)
    assert [s.name for s in stages] == ["left", "right", "final"]
    assert stages[2].needs == ("left", "right") and stages[1].needs == ("left",) and stages[0].needs == ()


def test_one_unnamed_document_is_the_final_merge_as_in_mergekit_multi():
    stages = parse_stages("---\n".join([doc("one", "m1", "m2"), doc(None, "one", "m3")]))
    assert [s.needs for s in stages] == [(), ("one",)]


def test_a_revision_makes_a_name_a_hub_model_not_a_stage():
    stages = parse_stages("---\n".join([doc("one", "m1", "m2"), doc(None, "one", "org/one@main")]))
    assert stages[1].needs == ("one",)


@pytest.mark.parametrize("docs, message", [
    ([doc("a", "m1", "m2"), doc("a", "a", "m3")], "used twice"),
    ([doc(None, "m1", "m2"), doc(None, "m3", "m4")], "second document without a name"),
    ([doc("a", "m1", "m2"), doc("b", "m3", "m4")], "2 stages are not used"),
    ([doc("a", "b", "m1"), doc("b", "a", "m2"), doc("c", "a", "m3")], "cycle"),
])
def test_bad_stage_graphs_are_refused_with_the_reason(docs, message):
    with pytest.raises(SpecError, match=message) as info:
        parse_stages("---\n".join(docs))
    assert info.value.path == "name"


def test_an_error_inside_a_stage_names_the_document():
    text = "---\n".join([doc("a", "m1", "m2"), "name: b\nmerge_method: linear\nmodels:\n  - model: a\n    parameters: {wieght: 1}\n"])
    with pytest.raises(SpecError, match=r"document 2") as info:
        parse_stages(text)
    assert "models[0].parameters" in str(info.value)
