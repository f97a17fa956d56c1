"""chat_template: auto | <name> | <jinja>, written into the output tokenizer_config.json. Named templates are our
own; they must render what mergekit 0.1.5's render (its files are read here as the reference)."""

from __future__ import annotations

import json
import shutil
import sys
from importlib import util
from pathlib import Path

import pytest
from helpers import run_mergekit
from tokenizer_models import SPECIALS, vocab_model, words
from transformers import AutoTokenizer

from hubmerge.errors import SpecError
from hubmerge.merge.tokenizer import NAMED_TEMPLATES
from hubmerge.pipeline.run import MergeOptions, plan_spec, run_merge
from hubmerge.spec import parse_spec

_MK = util.find_spec("mergekit")
MERGEKIT_TEMPLATES = Path(_MK.origin).parent / "_data" / "chat_templates" if _MK else None
HAS_MERGEKIT = shutil.which("mergekit-yaml") is not None or Path(sys.executable).with_name("mergekit-yaml").exists()

CONVERSATIONS = [
    [{"role": "user", "content": " hi "}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"},
     {"role": "assistant", "content": "a1 "}, {"role": "user", "content": "q2"}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    vocab_model(root / "base", SPECIALS + words(30), seed=1)
    vocab_model(root / "chat", SPECIALS + words(30), seed=2, chat_template="{% for m in messages %}A{{ m.content }}"
                                                                           "{% endfor %}")
    vocab_model(root / "code", SPECIALS + words(30), seed=3, chat_template="{% for m in messages %}B{{ m.content }}"
                                                                           "{% endfor %}")
    vocab_model(root / "math", SPECIALS + words(30), seed=4, chat_template="{% for m in messages %}B{{ m.content }}"
                                                                           "{% endfor %}\n")
    return root


@pytest.fixture(scope="module")
def renderer(models):
    return AutoTokenizer.from_pretrained(str(models / "base"))


def _render(tok, template: str, conversation, generation: bool) -> str:
    return tok.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                   add_generation_prompt=generation)


def _outputs(tok, template: str) -> list[str]:
    return [_render(tok, template, c, g) for c in CONVERSATIONS for g in (False, True)]


@pytest.mark.skipif(MERGEKIT_TEMPLATES is None, reason="mergekit 0.1.5 is not installed")
@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral"])
def test_named_templates_render_like_mergekits(renderer, name):
    theirs = (MERGEKIT_TEMPLATES / f"{name}.jinja").read_text()
    assert _outputs(renderer, NAMED_TEMPLATES[name]) == _outputs(renderer, theirs)


@pytest.mark.skipif(MERGEKIT_TEMPLATES is None, reason="mergekit 0.1.5 is not installed")
@pytest.mark.parametrize("name", ["alpaca", "exaone"])
@pytest.mark.xfail(strict=True, reason="mergekit 0.1.5 bugs: alpaca drops the blank line before the generation "
                                       "prompt ('hi### Response:'); exaone leaks its template's indentation")
def test_named_templates_where_mergekit_output_is_broken(renderer, name):
    theirs = (MERGEKIT_TEMPLATES / f"{name}.jinja").read_text()
    assert _outputs(renderer, NAMED_TEMPLATES[name]) == _outputs(renderer, theirs)


def test_alpaca_and_exaone_render_their_formats(renderer):
    conv = CONVERSATIONS[1]
    assert _render(renderer, NAMED_TEMPLATES["alpaca"], conv, True) == (
        "be brief\n\n### Instruction:\nq1\n\n### Response:\na1\n\n### Instruction:\nq2\n\n### Response:\n")
    assert _render(renderer, NAMED_TEMPLATES["alpaca"], CONVERSATIONS[0], False) == "\n\n### Instruction:\nhi"
    assert _render(renderer, NAMED_TEMPLATES["exaone"], conv, True) == (
        "[|system|]be brief[|endofturn|]\n[|user|]q1\n[|assistant|]a1 [|endofturn|]\n[|user|]q2\n[|assistant|]")
    assert _render(renderer, NAMED_TEMPLATES["exaone"], CONVERSATIONS[0], False) == (
        "[|system|][|endofturn|]\n[|user|] hi \n")


FOUR = ("merge_method: linear\nbase_model: base\nmodels:\n  - model: base\n    parameters: {weight: 1}\n"
        "  - model: chat\n    parameters: {weight: 1}\n  - model: code\n    parameters: {weight: 1}\n"
        "  - model: math\n    parameters: {weight: 1}\n")


def _merge(models: Path, out: Path, tail: str) -> dict:
    spec = parse_spec(FOUR + tail)
    run_merge(spec, out, MergeOptions(base_dir=models, show_progress=False))
    return json.loads((out / "tokenizer_config.json").read_text())


def test_named_template_written_into_tokenizer_config(models, tmp_path):
    config = _merge(models, tmp_path / "out", "chat_template: chatml\n")
    assert config["chat_template"] == NAMED_TEMPLATES["chatml"]
    assert AutoTokenizer.from_pretrained(str(tmp_path / "out")).chat_template == NAMED_TEMPLATES["chatml"]
    assert not (tmp_path / "out" / "chat_template.jinja").exists()


def test_auto_takes_the_most_common_input_template(models, tmp_path):
    config = _merge(models, tmp_path / "out", "tokenizer_source: union\nchat_template: auto\n")
    # code and math share one template (math's differs only by a trailing newline, which mergekit strips)
    assert config["chat_template"] == "{% for m in messages %}B{{ m.content }}{% endfor %}"


def test_literal_template_and_no_template(models, tmp_path):
    literal = "{% for m in messages %}<<{{ m.content }}>>{% endfor %}"
    assert _merge(models, tmp_path / "a", f"chat_template: {json.dumps(literal)}\n")["chat_template"] == literal
    # without chat_template the base's tokenizer files are copied as they are (base has no template)
    assert "chat_template" not in _merge(models, tmp_path / "b", "")


@pytest.mark.parametrize("value, match", [("chatml2", "unknown chat template name"), ("{{ x }}", "too short")])
def test_bad_chat_template_is_refused_before_merging(models, value, match):
    spec = parse_spec("merge_method: linear\nmodels:\n  - model: base\n    parameters: {weight: 1}\n"
                      f"chat_template: {json.dumps(value)}\n")
    with pytest.raises(SpecError, match=match) as err:
        plan_spec(spec, base_dir=models)
    assert err.value.path == "chat_template"


@pytest.mark.mergekit
@pytest.mark.skipif(not HAS_MERGEKIT, reason="mergekit 0.1.5 is not installed")
@pytest.mark.parametrize("value", ["auto", "llama3"])
def test_chat_template_like_mergekit(models, tmp_path, renderer, value):
    tail = f"chat_template: {value}\n"
    _merge(models, tmp_path / "ours", tail)
    spec_path = models / f"chat-{value}.yml"
    spec_path.write_text(FOUR + tail)
    run_mergekit(spec_path, tmp_path / "theirs")
    ours = AutoTokenizer.from_pretrained(str(tmp_path / "ours")).chat_template
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "theirs")).chat_template
    assert _outputs(renderer, ours) == _outputs(renderer, theirs)
