"""Fitness evaluations and their cheap estimates, checked against transformers' own numbers and scipy.

- perplexity equals exp(mean NLL) from transformers' cross-entropy loss, line by line;
- prompt/answer accuracy equals greedy generation; multiple choice picks the likeliest continuation;
- an anchor-subset estimate is the textbook ratio estimator with a finite-population t interval (scipy's t),
  and those intervals cover the full evaluation at about their nominal level over many random subsets.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import scipy.stats
import torch
from evolve_support import encode, load_reference, reference_line_nll

from hubmerge.evolve import EvalError
from hubmerge.evolve.estimators import anchor_indices, ratio_estimate, t_quantile
from hubmerge.evolve.evaluate import load_model, parse_eval


@pytest.fixture(scope="module")
def task_a(task_models):
    return load_model(task_models.task_a)


@pytest.fixture(scope="module")
def task_a_items(task_models):
    """(summed NLL, tokens) per line of the combined text, from transformers alone."""
    return reference_line_nll(task_models.task_a, task_models.ppl)


def test_perplexity_is_exp_of_mean_token_nll(task_models, task_a, task_a_items):
    got = parse_eval(f"ppl:{task_models.ppl}").evaluate(task_a)
    want = math.exp(sum(s for s, _ in task_a_items) / sum(n for _, n in task_a_items))
    assert got.value == pytest.approx(want, rel=1e-5)
    assert (got.n, got.total) == (56, 56)


def _greedy_correct(model, tok, prompt: str, answer: str) -> bool:
    """Greedy decoding of a one-token answer: the argmax of the next-token logits."""
    want = tok(" " + answer, add_special_tokens=False)["input_ids"]
    assert len(want) == 1
    return int(model(input_ids=encode(tok, prompt)).logits[0, -1].argmax()) == want[0]


def _continuation_logprob(model, tok, prompt: str, answer: str) -> float:
    """log p(answer | prompt) from two of transformers' mean losses."""
    def total_nll(text: str) -> float:
        ids = encode(tok, text)
        return float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)

    return total_nll(prompt) - total_nll(prompt + " " + answer)


def test_accuracy_is_greedy_generation_and_likeliest_choice(task_models, task_a, tmp_path):
    model, tok = load_reference(task_models.task_a)
    items = [json.loads(line) for line in task_models.jsonl.read_text().splitlines()]
    with torch.inference_mode():
        want = sum(_greedy_correct(model, tok, it["prompt"], it["answer"]) for it in items) / len(items)
    got = parse_eval(f"jsonl:{task_models.jsonl}").evaluate(task_a).value
    assert got == pytest.approx(want)
    assert 0.4 <= got <= 0.6  # the fine-tune knows its own task and not the other one

    # Multiple choice: the right answer among a distractor from each task, in shuffled positions.
    rng = random.Random(3)
    mc, expected = [], []
    for it in items[:20]:
        choices = [it["answer"], f"w{rng.randrange(60)}", f"w{rng.randrange(60)}"]
        rng.shuffle(choices)
        answer = choices.index(it["answer"])
        mc.append({"prompt": it["prompt"], "choices": choices, "answer": answer if len(mc) % 2 else choices[answer]})
        with torch.inference_mode():
            scores = [_continuation_logprob(model, tok, it["prompt"], c) for c in choices]
        expected.append(float(max(range(3), key=scores.__getitem__) == answer))
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in mc) + "\n")
    assert parse_eval(str(path)).evaluate(task_a).value == pytest.approx(sum(expected) / len(expected))


def _hand_interval(items, subset, confidence=0.95):
    """The ratio estimator's t interval, written out: finite-population correction, scipy's t quantile."""
    big_n, k = len(items), len(subset)
    s = [items[i][0] for i in subset]
    w = [items[i][1] for i in subset]
    r = sum(s) / sum(w)
    var = sum((si - r * wi) ** 2 for si, wi in zip(s, w)) / (k - 1)
    se = math.sqrt((1 - k / big_n) * var / k) / (sum(w) / k)
    half = scipy.stats.t.ppf(0.5 + confidence / 2, k - 1) * se
    return math.exp(r), math.exp(r - half), math.exp(r + half)


@pytest.mark.parametrize("k", [6, 12, 30])
def test_anchor_estimate_is_the_ratio_estimator_t_interval(task_models, task_a, task_a_items, k):
    ev = parse_eval(f"ppl:{task_models.ppl}")
    for seed in range(3):
        subset = anchor_indices(len(ev), k, seed)
        assert len(set(subset)) == k and subset == sorted(subset) and max(subset) < len(ev)
        got = ev.evaluate(task_a, subset)
        value, low, high = _hand_interval(task_a_items, subset)
        assert (got.n, got.total) == (k, 56)
        assert got.value == pytest.approx(value, rel=1e-5)
        assert got.low == pytest.approx(low, rel=1e-5) and got.high == pytest.approx(high, rel=1e-5)
    # The subset is fixed by the seed (the same items for every candidate of a search) and changes with it.
    assert anchor_indices(56, k, 0) == anchor_indices(56, k, 0) != anchor_indices(56, k, 1)


def test_anchor_intervals_cover_the_full_value_at_their_level(task_a_items):
    """Over many random anchor subsets, the 95% interval holds the full-data perplexity about 95% of the time,
    and it narrows as more anchors are used (all items: the exact value, no width)."""
    full = math.exp(sum(s for s, _ in task_a_items) / sum(n for _, n in task_a_items))
    widths = {}
    for k in (8, 20):
        hits, width = 0, 0.0
        seeds = range(400)
        for seed in seeds:
            subset = anchor_indices(len(task_a_items), k, seed)
            est = ratio_estimate([task_a_items[i][0] for i in subset], [task_a_items[i][1] for i in subset],
                                 total=len(task_a_items), transform=math.exp)
            hits += est.low <= full <= est.high
            width += (est.high - est.low) / len(seeds)
        assert 0.90 <= hits / len(seeds) <= 0.99, (k, hits / len(seeds))
        widths[k] = width
    assert widths[20] < 0.75 * widths[8]
    every = ratio_estimate([s for s, _ in task_a_items], [n for _, n in task_a_items], total=len(task_a_items),
                           transform=math.exp)
    assert every.value == pytest.approx(full) and every.low == pytest.approx(full) == every.high


def test_t_quantile_matches_scipy():
    for df in (1, 2, 5, 23, 200):
        for p in (0.6, 0.95, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-7)


def test_bad_evaluations_say_what_to_fix(task_models, tmp_path):
    with pytest.raises(EvalError, match="cannot understand --eval 'nonsense'") as err:
        parse_eval("nonsense")
    assert "ppl:FILE.txt" in err.value.hint
    with pytest.raises(EvalError, match="no such file"):
        parse_eval(f"ppl:{tmp_path / 'missing.txt'}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "w1 w2", "answer": "w3"}\n{"prompt": "w1", "choices": ["w2"], "answer": 0}\n')
    with pytest.raises(EvalError, match=r"bad\.jsonl:2: 'choices' must list at least two"):
        parse_eval(str(bad))
    bad.write_text('{"prompt": "w1 w2", "answer": "w3"}\nnot json\n')
    with pytest.raises(EvalError, match=r"bad\.jsonl:2: not valid JSON"):
        parse_eval(f"jsonl:{bad}")


def test_a_user_callable_is_scored_with_a_t_interval(task_models, task_a, tmp_path, monkeypatch):
    (tmp_path / "my_fitness.py").write_text(
        "import torch\n"
        "def per_item(model, tokenizer):\n"
        "    ids = torch.tensor([[1, 4 + 5, 4 + 6]])\n"
        "    logits = model(input_ids=ids).logits[0]\n"
        "    return [float(v) for v in logits[-1, 4:12]]\n"
        "def total(model, tokenizer):\n"
        "    return 2.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scores = parse_eval("my_fitness:per_item").evaluate(task_a)
    model, _ = load_reference(task_models.task_a)
    with torch.inference_mode():
        want = [float(v) for v in model(input_ids=torch.tensor([[1, 9, 10]])).logits[0, -1, 4:12]]
    mean = sum(want) / len(want)
    half = scipy.stats.t.ppf(0.975, len(want) - 1) * scipy.stats.sem(want)
    assert scores.value == pytest.approx(mean, rel=1e-5)
    assert (scores.low, scores.high) == (pytest.approx(mean - half, rel=1e-5), pytest.approx(mean + half, rel=1e-5))
    assert parse_eval("my_fitness:total").evaluate(task_a).value == 2.5
    with pytest.raises(EvalError, match="has no callable 'nothing'"):
        parse_eval("my_fitness:nothing")
