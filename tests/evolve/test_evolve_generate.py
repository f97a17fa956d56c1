"""Generated answers in ``jsonl:`` evaluations (--max-new-tokens, --answer-regex, --chat-template, --fewshot),
checked against transformers' own greedy ``generate`` of each prompt, one at a time, with the prompt text
(shots, chat template) written out by hand here."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from evolve_support import encode, load_reference

from hubmerge.cli import main
from hubmerge.evolve import EvalError
from hubmerge.evolve.evaluate import JsonlOptions, answer_matches, load_model, parse_eval

FIRST_WORD = r"^\s*(w\d+)"
TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


@pytest.fixture(scope="module")
def holder(task_models):
    return load_model(task_models.task_a)


@pytest.fixture(scope="module")
def reference(task_models):
    model, tok = load_reference(task_models.task_a)

    def generate(text: str, new: int) -> str:
        ids = encode(tok, text)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 do_sample=False, pad_token_id=tok.pad_token_id or 0)
        return tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)

    return generate


def _items(task_models) -> list[dict]:
    return [json.loads(line) for line in task_models.jsonl.read_text().splitlines()]


def _first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""


@pytest.mark.parametrize("regex", [None, FIRST_WORD])
def test_generated_answers_match_one_at_a_time_generate(task_models, holder, reference, regex):
    items = _items(task_models)
    want = [float(_first_word(reference(it["prompt"], 3)) == it["answer"]) for it in items]
    ev = parse_eval(f"jsonl:{task_models.jsonl}", jsonl=JsonlOptions(max_new_tokens=3, answer_regex=regex))
    assert ev.item_scores(holder, batch_size=7) == want  # batched, left-padded
    assert 0.3 <= sum(want) / len(want) <= 0.6  # task_a answers its own half
    assert ev.evaluate(holder, [0, 5, 9]).value == pytest.approx(sum(want[i] for i in (0, 5, 9)) / 3)


def test_fewshot_and_chat_template_prompts(task_models, reference):
    items = _items(task_models)
    k = 3
    shots = "".join(f"{it['prompt']} {it['answer']}\n\n" for it in items[:k])
    want = [float(_first_word(reference(shots + it["prompt"], 2)) == it["answer"]) for it in items[k:]]
    ev = parse_eval(str(task_models.jsonl), jsonl=JsonlOptions(max_new_tokens=2, fewshot=k))
    holder = load_model(task_models.task_a)
    assert len(ev) == len(items) - k
    assert ev.item_scores(holder) == want

    chat = parse_eval(str(task_models.jsonl), jsonl=JsonlOptions(max_new_tokens=2, fewshot=1, chat_template=True))
    with pytest.raises(EvalError, match="--chat-template: the model's tokenizer has no chat template"):
        chat.item_scores(holder)
    holder.tokenizer.chat_template = TEMPLATE
    turns = f"{items[0]['prompt']} {items[0]['answer']} "
    want = [float(_first_word(reference(turns + it["prompt"] + " ", 2)) == it["answer"]) for it in items[1:]]
    assert chat.item_scores(holder) == want


def test_answer_regex_extraction():
    number = re.compile(r"-?[0-9][0-9,.]*")
    assert answer_matches("3 apples, so 1,234.0 in all", "1234", number) == (True, True)
    assert answer_matches("so 12", "13", number) == (False, True)
    assert answer_matches("no digits", "1", number) == (False, False)
    assert answer_matches("The answer is (B).", "B", re.compile(r"\(([A-D])\)")) == (True, True)
    assert answer_matches(" w7 w8", "w7", None) == (True, True)
    assert answer_matches(" w77", "w7", None) == (False, True)


def test_a_regex_that_never_matches_warns_with_the_count(task_models, holder, caplog):
    ev = parse_eval(str(task_models.jsonl), jsonl=JsonlOptions(answer_regex="zzz"))
    with caplog.at_level(logging.WARNING, logger="hubmerge"):
        assert ev.evaluate(holder, list(range(10))).value == 0.0
    assert "--answer-regex 'zzz' matched nothing in 10 of 10 generations" in caplog.text


def test_cli_options_and_their_errors(task_models, reference, capsys):
    items = _items(task_models)
    want = sum(_first_word(reference(it["prompt"], 2)) == it["answer"] for it in items) / len(items)
    argv = ["eval", str(task_models.task_a), "--eval", f"jsonl:{task_models.jsonl}", "--json"]
    assert main(argv + ["--max-new-tokens", "2", "--answer-regex", FIRST_WORD]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["value"] == pytest.approx(want)
    for extra, words in [(["--answer-regex", "(w"], "--answer-regex '(w' is not a regular expression"),
                         (["--fewshot", "56"], "--fewshot 56: "), (["--max-new-tokens", "0"], "--max-new-tokens")]:
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err
