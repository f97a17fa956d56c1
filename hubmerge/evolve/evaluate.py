"""Fitness of a causal LM: perplexity on a text file, accuracy on JSONL items, or a user callable.

``--eval`` forms:

- ``ppl:PATH`` (or a ``.txt`` path): perplexity over the file's non-empty lines, one item per line
  (lower is better). A line longer than the model's context is scored in windows.
- ``jsonl:PATH`` (or a ``.jsonl`` path): accuracy (higher is better) over one JSON object per line, either
  ``{"prompt": ..., "answer": "..."}`` — correct when greedy decoding after the prompt reproduces every
  token of the answer (for a one-token answer: greedy next-token) — or
  ``{"prompt": ..., "choices": [...], "answer": <index or choice text>}`` — correct when the answer has the
  highest log-likelihood among the choices. The prompt and the answer are joined with one space unless
  the prompt ends, or the answer starts, with whitespace.
  Generated answers: with ``max_new_tokens`` (``--max-new-tokens``) or an ``answer_regex``
  (``--answer-regex``), a ``{"prompt", "answer"}`` item is scored by greedy generation instead (batched,
  left-padded): the answer is the regex's last match in the generated text (its first group if it has
  one; e.g. ``-?[0-9][0-9,.]*`` for the last number) and must equal the item's answer (numbers compared as
  numbers); without a regex the generated text must begin with the answer. ``chat_template``
  (``--chat-template``) wraps each prompt in the model's chat template; ``fewshot`` K (``--fewshot``) puts
  the first K items, with their answers, before every prompt as examples (as chat turns with a template)
  and leaves them out of the scored items.
- ``MODULE:FUNCTION``: imports MODULE (which runs its code — only when you pass it) and calls
  ``FUNCTION(model, tokenizer)``; it returns a float (higher is better unless ``--objectives min``) or a
  list of per-item scores (their mean, with a t interval).

Models are evaluated as transformers models built from a config and a state dict, never with remote code.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from hubmerge.evolve.errors import EvalError
from hubmerge.evolve.estimators import Estimate, mean_estimate, ratio_estimate

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Side files a tokenizer may need (a subset of what a merge copies from its tokenizer source).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")


# ---------------------------------------------------------------------------------------------
# Models


class ModelHolder:
    """A transformers causal LM built once from a config (random init, never remote code); candidate
    weights are then copied into it with ``load``, so a search builds the module tree only once."""

    def __init__(self, config: dict[str, Any], tokenizer_files: dict[str, bytes], *, dtype: str = "float32",
                 device: str = "cpu", name: str = "model"):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from hubmerge.merge.executor import pick_device

        self.name = name
        self.device = pick_device(device)
        if dtype not in TORCH_DTYPES:
            raise EvalError(f"unknown evaluation dtype {dtype!r}", hint="use float32, bfloat16 or float16")
        with tempfile.TemporaryDirectory(prefix="hubmerge-eval-") as tmp:
            folder = Path(tmp)
            (folder / "config.json").write_text(json.dumps(config))
            for fname, data in tokenizer_files.items():
                (folder / fname).write_bytes(data)
            if not any(f in tokenizer_files for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
                raise EvalError(f"{name} has no tokenizer files", hint="evaluation needs the model's tokenizer")
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
                hf_config = AutoConfig.from_pretrained(str(folder))
                self.model = AutoModelForCausalLM.from_config(hf_config, dtype=TORCH_DTYPES[dtype])
            except (ValueError, KeyError, OSError, ImportError) as exc:
                raise EvalError(f"transformers cannot build {name} for evaluation: {exc}",
                                hint="evaluation supports architectures transformers knows (no remote code)") from None
        self.model.to(self.device).eval()
        self.max_length = int(min(getattr(hf_config, "max_position_embeddings", None) or 2048, 4096))
        self.model_id = 0  # bumped on every load, so cached results never mix two models

    def load(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy a full set of weights in (cast to the evaluation dtype); tied weights may be left out."""
        result = self.model.load_state_dict(state_dict, strict=False)
        if result.unexpected_keys:
            raise EvalError(f"{self.name}: weights the model does not have: {', '.join(result.unexpected_keys[:5])}",
                            hint="the config and the tensors disagree on the architecture")
        if result.missing_keys:
            loaded = {id(p) for n, p in self.model.named_parameters(remove_duplicate=False) if n in state_dict}
            params = dict(self.model.named_parameters(remove_duplicate=False))
            untied = [k for k in result.missing_keys if k in params and id(params[k]) not in loaded]
            if untied:
                raise EvalError(f"{self.name}: weights missing: {', '.join(untied[:5])}",
                                hint="the merge did not produce every tensor the architecture needs")
        self.model_id += 1


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """Every tensor of an opened ModelSource, read once."""
    return {name: source.reader.read(info) for name, info in source.tensors.items()}


def tokenizer_files_of(source) -> dict[str, bytes]:
    out = {}
    for fname in TOKENIZER_FILES:
        data = source.read_file(fname)
        if data is not None:
            out[fname] = data
    return out


def load_model(target: str | Path | Any, *, hub: Any = None, base_dir: Path | None = None, dtype: str = "float32",
               device: str = "cpu") -> ModelHolder:
    """A local model folder (a Path), a model reference, or a string naming either a folder or a Hub repo
    (``org/name[@rev]``), loaded for evaluation."""
    from hubmerge.sources.model import open_local_model
    from hubmerge.sources.open import open_model
    from hubmerge.spec.model import ModelRef
    from hubmerge.spec.parse import parse_ref

    if isinstance(target, Path):
        source = open_local_model(ModelRef(str(target)), target)
    else:
        ref = target if isinstance(target, ModelRef) else parse_ref(str(target), "target")
        source = open_model(ref, base_dir=base_dir, hub=hub)
    try:
        holder = ModelHolder(source.config, tokenizer_files_of(source), dtype=dtype, device=device, name=source.name)
        holder.load(read_state_dict(source))
    finally:
        source.close()
    return holder


# ---------------------------------------------------------------------------------------------
# Scoring sequences


@dataclass(frozen=True)
class _Scored:
    logprob: float  # summed log-probability of the scored tokens
    greedy: bool  # every scored token is the argmax given its prefix (greedy decoding reproduces them)
    n: int  # tokens scored


def score_sequences(holder: ModelHolder, seqs: Sequence[tuple[list[int], int]], *,
                    batch_size: int = 32) -> list[_Scored]:
    """For each (ids, n_ctx): score tokens ids[n_ctx:] given their prefixes, batched and right-padded."""
    out: list[_Scored | None] = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    model, device = holder.model, holder.device
    pad = holder.tokenizer.pad_token_id
    pad = 0 if pad is None else pad
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(seqs[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = seqs[i][0]
                ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = ids[:, 1:].to(device)
            token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
            greedy = (logprobs.argmax(-1) == targets).cpu()
            for row, i in enumerate(batch):
                seq, n_ctx = seqs[i]
                lo, hi = n_ctx - 1, len(seq) - 1  # position p predicts token p+1
                out[i] = _Scored(float(token_lp[row, lo:hi].sum()), bool(greedy[row, lo:hi].all()), hi - lo)
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Evaluations


class Evaluation:
    """One objective. ``evaluate(holder, indices)`` scores the items at ``indices`` (all by default)."""

    spec: str
    label: str
    direction: str  # "minimize" | "maximize"
    metric: str

    def __len__(self) -> int:
        return 0

    def evaluate(self, holder: ModelHolder, indices: Sequence[int] | None = None, *, batch_size: int = 32,
                 confidence: float = 0.95) -> Estimate:
        raise NotImplementedError

    @property
    def has_items(self) -> bool:
        return len(self) > 0

    @property
    def identity(self) -> str:
        """What a study records of this evaluation (a resumed study must evaluate the same way)."""
        return self.spec


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _with_start(tokenizer, ids: list[int]) -> list[int]:
    """Prefix the BOS token when the tokenizer has one and did not add it, so the first token is scored."""
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        return [bos] + ids
    return ids


def _split(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids): the joint encoding split where the prompt's encoding ends."""
    sep = "" if (not prompt or prompt[-1].isspace() or answer[:1].isspace()) else " "
    ctx = _with_start(tokenizer, _encode(tokenizer, prompt))
    whole = _with_start(tokenizer, _encode(tokenizer, prompt + sep + answer))
    if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx):]
    return ctx, list(tokenizer(sep + answer, add_special_tokens=False)["input_ids"])


@dataclass
class _TokenCache:
    tokenizer: Any = None
    items: list = field(default_factory=list)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read {what} {path}: {exc}") from None


class PerplexityEval(Evaluation):
    metric = "perplexity"
    direction = "minimize"

    def __init__(self, path: Path, spec: str):
        self.spec, self.path = spec, path
        self.label = f"ppl({path.name})"
        text = _read_text(path, "the perplexity text")
        self.lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(self.lines) < 1:
            raise EvalError(f"{path} has no non-empty lines to compute a perplexity on")
        self._cache = _TokenCache()

    def __len__(self) -> int:
        return len(self.lines)

    def _sequences(self, holder: ModelHolder) -> list[list[tuple[list[int], int]]]:
        if self._cache.tokenizer is not holder.tokenizer:
            tok, window = holder.tokenizer, holder.max_length
            items = []
            for line in self.lines:
                ids = _with_start(tok, _encode(tok, line))
                windows = [(ids[i:i + window], 1) for i in range(0, max(1, len(ids) - 1), window - 1)]
                items.append([(w, n) for w, n in windows if len(w) >= 2])
            self._cache = _TokenCache(tok, items)
        return self._cache.items

    def evaluate(self, holder, indices=None, *, batch_size=32, confidence=0.95) -> Estimate:
        items = self._sequences(holder)
        indices = list(range(len(items))) if indices is None else list(indices)
        flat, owner = [], []
        for i in indices:
            for seq in items[i]:
                flat.append(seq)
                owner.append(i)
        scored = score_sequences(holder, flat, batch_size=batch_size)
        nll = {i: 0.0 for i in indices}
        count = {i: 0 for i in indices}
        for i, s in zip(owner, scored):
            nll[i] -= s.logprob
            count[i] += s.n
        kept = [i for i in indices if count[i] > 0]
        if not kept:
            raise EvalError(f"{self.path}: no line has two or more tokens to score")
        return ratio_estimate([nll[i] for i in kept], [count[i] for i in kept], total=len(items),
                              confidence=confidence, transform=_safe_exp)


def _safe_exp(x: float) -> float:
    return math.exp(min(x, 700.0))


@dataclass(frozen=True)
class JsonlOptions:
    """How ``jsonl:`` items are prompted and scored (the CLI's --max-new-tokens, --answer-regex,
    --chat-template, --fewshot)."""

    max_new_tokens: int | None = None  # generate up to this many tokens per prompt/answer item
    answer_regex: str | None = None  # extract the answer from the generation (its last match)
    chat_template: bool = False
    fewshot: int = 0

    @property
    def generates(self) -> bool:
        return self.max_new_tokens is not None or self.answer_regex is not None

    @property
    def is_default(self) -> bool:
        return self == JsonlOptions()

    def check(self) -> None:
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= 4096:
            raise EvalError(f"--max-new-tokens must be between 1 and 4096, got {self.max_new_tokens}")
        if self.fewshot < 0:
            raise EvalError(f"--fewshot must be 0 or more, got {self.fewshot}")
        if self.answer_regex is not None:
            try:
                re.compile(self.answer_regex)
            except re.error as exc:
                raise EvalError(f"--answer-regex {self.answer_regex!r} is not a regular expression: {exc}") from None


DEFAULT_MAX_NEW_TOKENS = 32  # when only --answer-regex asks for generation


def _number(text: str) -> float | None:
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def answer_matches(generated: str, answer: str, regex: re.Pattern | None) -> tuple[bool, bool]:
    """(correct, the regex matched): the regex's last match (its first group if any) against the answer,
    numbers as numbers; without a regex, the generation must begin with the answer (then a non-word)."""
    answer = answer.strip()
    if regex is None:
        text = generated.lstrip()
        rest = text[len(answer):len(answer) + 1]
        return text.startswith(answer) and not (rest.isalnum() or rest == "_"), True
    found = list(regex.finditer(generated))
    if not found:
        return False, False
    last = found[-1]
    got = (last.group(1) if regex.groups else last.group(0)) or ""
    got = got.strip()
    a, b = _number(got), _number(answer)
    return (a == b if a is not None and b is not None else got == answer), True


class JsonlEval(Evaluation):
    metric = "accuracy"
    direction = "maximize"

    def __init__(self, path: Path, spec: str, options: JsonlOptions | None = None):
        self.spec, self.path = spec, path
        self.options = options or JsonlOptions()
        self.options.check()
        self.label = f"acc({path.name})"
        lines = _read_text(path, "the JSONL items").splitlines()
        self.items: list[dict[str, Any]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            self.items.append(self._check(item, f"{path}:{number}"))
        if not self.items:
            raise EvalError(f"{path} holds no items", hint='one JSON object per line: {"prompt": ..., "answer": ...}')
        k = self.options.fewshot
        if k >= len(self.items):
            raise EvalError(f"--fewshot {k}: {path} holds only {len(self.items)} items (the first K are the shots)",
                            hint="use fewer shots or more items")
        self.shots, self.items = self.items[:k], self.items[k:]
        self._regex = re.compile(self.options.answer_regex) if self.options.answer_regex is not None else None
        self._cache = _TokenCache()
        self._prompts: _TokenCache = _TokenCache()

    @property
    def identity(self) -> str:
        if self.options.is_default:
            return self.spec
        o = self.options
        return (f"{self.spec} (max_new_tokens={o.max_new_tokens}, answer_regex={o.answer_regex!r}, "
                f"chat_template={o.chat_template}, fewshot={o.fewshot})")

    def _prompt(self, tokenizer, prompt: str) -> str:
        """The text before an answer: shots, then the prompt (in the chat template when asked)."""
        def answer_of(item: dict[str, Any]) -> str:
            return item["choices"][item["answer"]] if "choices" in item else item["answer"]

        if self.options.chat_template:
            if not getattr(tokenizer, "chat_template", None):
                raise EvalError(f"--chat-template: the model's tokenizer has no chat template ({self.path})",
                                hint="drop --chat-template, or merge with a tokenizer that has one")
            messages = []
            for shot in self.shots:
                messages += [{"role": "user", "content": shot["prompt"]},
                             {"role": "assistant", "content": answer_of(shot)}]
            messages.append({"role": "user", "content": prompt})
            try:
                return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # noqa: BLE001 - a template's own error (jinja): name the option
                raise EvalError(f"--chat-template: the model's chat template failed: {exc}") from None
        parts = []
        for shot in self.shots:
            p, a = shot["prompt"], answer_of(shot)
            sep = "" if (not p or p[-1].isspace() or a[:1].isspace()) else " "
            parts.append(p + sep + a + "\n\n")
        return "".join(parts) + prompt

    @staticmethod
    def _check(item: Any, where: str) -> dict[str, Any]:
        hint = ('use {"prompt": "...", "answer": "..."} or '
                '{"prompt": "...", "choices": ["...", ...], "answer": <index or choice>}')
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or "answer" not in item:
            raise EvalError(f"{where}: an item needs a string 'prompt' and an 'answer'", hint=hint)
        choices = item.get("choices")
        if choices is None:
            if not isinstance(item["answer"], str) or not item["answer"].strip():
                raise EvalError(f"{where}: 'answer' must be a non-empty string", hint=hint)
            return {"prompt": item["prompt"], "answer": item["answer"]}
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise EvalError(f"{where}: 'choices' must list at least two non-empty strings", hint=hint)
        answer = item["answer"]
        if isinstance(answer, str):
            if answer not in choices:
                raise EvalError(f"{where}: the answer {answer!r} is not one of the choices", hint=hint)
            answer = choices.index(answer)
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise EvalError(f"{where}: 'answer' must be a choice's index (0..{len(choices) - 1}) or its text",
                            hint=hint)
        return {"prompt": item["prompt"], "choices": choices, "answer": answer}

    def __len__(self) -> int:
        return len(self.items)

    def _sequences(self, holder: ModelHolder) -> list[list[tuple[list[int], int]]]:
        if self._cache.tokenizer is not holder.tokenizer:
            tok, out = holder.tokenizer, []
            for n, item in enumerate(self.items):
                answers = item.get("choices") or [item["answer"]]
                seqs = []
                prompt = self._prompt(tok, item["prompt"])
                for answer in answers:
                    ctx, cont = _split(tok, prompt, answer)
                    if not ctx:
                        raise EvalError(f"{self.path}: item {n + 1} has an empty prompt and the tokenizer no BOS token")
                    if not cont:
                        raise EvalError(f"{self.path}: item {n + 1}: the answer {answer!r} encodes to no tokens")
                    seq, cut = ctx + cont, max(0, len(ctx) + len(cont) - holder.max_length)
                    seqs.append((seq[cut:], max(1, len(ctx) - cut)))  # too long: drop the prompt's start
                out.append(seqs)
            self._cache = _TokenCache(tok, out)
        return self._cache.items

    def item_scores(self, holder, indices=None, *, batch_size=32) -> list[float]:
        """1.0 or 0.0 for each item at ``indices`` (all by default), in that order."""
        indices = list(range(len(self.items))) if indices is None else list(indices)
        generated = {}
        if self.options.generates:
            wanted = [i for i in indices if "choices" not in self.items[i]]
            generated = dict(zip(wanted, self._generate(holder, wanted, batch_size=batch_size)))
        items = self._sequences(holder)
        flat = [seq for i in indices if i not in generated for seq in items[i]]
        scored = iter(score_sequences(holder, flat, batch_size=batch_size))
        correct, unmatched = [], 0
        for i in indices:
            if i in generated:
                ok, matched = answer_matches(generated[i], self.items[i]["answer"], self._regex)
                unmatched += not matched
                correct.append(1.0 if ok else 0.0)
                continue
            results = [next(scored) for _ in items[i]]
            if "choices" in self.items[i]:
                best = max(range(len(results)), key=lambda c: results[c].logprob)
                correct.append(1.0 if best == self.items[i]["answer"] else 0.0)
            else:
                correct.append(1.0 if results[0].greedy else 0.0)
        if unmatched:
            logger.warning("--answer-regex %r matched nothing in %d of %d generations (%s); those count as wrong",
                           self.options.answer_regex, unmatched, len(generated), self.path.name)
        return correct

    def _generate(self, holder, indices: list[int], *, batch_size: int) -> list[str]:
        """Greedy continuations of the items' prompts, batched (left-padded), decoded without the prompt."""
        tok = holder.tokenizer
        if self._prompts.tokenizer is not tok:
            prompts = [_with_start(tok, _encode(tok, self._prompt(tok, item["prompt"]))) if "choices" not in item
                       else [] for item in self.items]
            self._prompts = _TokenCache(tok, prompts)
        new = self.options.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        out: dict[int, str] = {}
        order = sorted(indices, key=lambda i: len(self._prompts.items[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                seqs = [self._prompts.items[i][-max(1, holder.max_length - new):] for i in batch]
                width = max(len(q) for q in seqs)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, q in enumerate(seqs):
                    ids[row, width - len(q):] = torch.tensor(q, dtype=torch.long)
                    mask[row, width - len(q):] = 1
                result = holder.model.generate(input_ids=ids.to(holder.device), attention_mask=mask.to(holder.device),
                                               max_new_tokens=new, do_sample=False, num_beams=1, pad_token_id=pad)
                for row, i in enumerate(batch):
                    out[i] = tok.decode(result[row, width:].tolist(), skip_special_tokens=True)
        return [out[i] for i in indices]

    def evaluate(self, holder, indices=None, *, batch_size=32, confidence=0.95) -> Estimate:
        correct = self.item_scores(holder, indices, batch_size=batch_size)
        return ratio_estimate(correct, [1.0] * len(correct), total=len(self.items), confidence=confidence)


class CallableEval(Evaluation):
    metric = "score"
    direction = "maximize"

    def __init__(self, module: str, function: str, spec: str):
        self.spec, self.label = spec, f"{module}:{function}"
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # a module file next to where the command runs
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise EvalError(f"--eval {spec}: cannot import module {module!r}: {exc}",
                            hint="put the module in the current directory or install it") from None
        fn = getattr(mod, function, None)
        if not callable(fn):
            raise EvalError(f"--eval {spec}: {module} has no callable {function!r}")
        self.fn: Callable[..., Any] = fn

    def __len__(self) -> int:
        return 0

    def evaluate(self, holder, indices=None, *, batch_size=32, confidence=0.95) -> Estimate:
        try:
            with torch.inference_mode():
                value = self.fn(holder.model, holder.tokenizer)
        except Exception as exc:  # noqa: BLE001 - the user's code: this candidate fails, the search goes on
            raise EvalError(f"{self.spec} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(value, (list, tuple)):
            values = [float(v) for v in value]
            if not values:
                raise EvalError(f"{self.spec} returned no scores")
            return mean_estimate(values, confidence=confidence)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise EvalError(f"{self.spec} returned {type(value).__name__}, not a number") from None
        if not math.isfinite(value):
            raise EvalError(f"{self.spec} returned {value}")
        return Estimate(value, None, None, 0, 0, confidence)


def parse_eval(spec: str, *, base_dir: Path | None = None, jsonl: JsonlOptions | None = None) -> Evaluation:
    """``ppl:PATH``, ``jsonl:PATH``, a .txt/.jsonl path, or ``MODULE:FUNCTION`` (imported only here);
    ``jsonl``: how JSONL items are prompted and scored."""
    kind, sep, rest = spec.partition(":")
    candidates = [Path(spec)] + ([base_dir / spec] if base_dir is not None else [])

    def path_of(text: str) -> Path:
        p = Path(text).expanduser()
        if not p.is_absolute() and not p.exists() and base_dir is not None and (base_dir / p).exists():
            p = base_dir / p
        if not p.is_file():
            raise EvalError(f"--eval {spec}: no such file {p}")
        return p

    if sep and kind == "ppl":
        return PerplexityEval(path_of(rest), spec)
    if sep and kind == "jsonl":
        return JsonlEval(path_of(rest), spec, jsonl)
    if any(c.is_file() for c in candidates) or spec.endswith((".txt", ".jsonl")):
        p = path_of(spec)
        return JsonlEval(p, spec, jsonl) if p.suffix == ".jsonl" else PerplexityEval(p, spec)
    if sep and rest and all(part.isidentifier() for part in kind.split(".")) and rest.isidentifier():
        return CallableEval(kind, rest, spec)
    raise EvalError(f"cannot understand --eval {spec!r}",
                    hint="use ppl:FILE.txt, jsonl:FILE.jsonl, or MODULE:FUNCTION (a callable (model, tokenizer) -> float)")


def parse_directions(evals: Sequence[Evaluation], objectives: Sequence[str] | None) -> list[str]:
    """Each evaluation's direction, overridden by ``--objectives`` (one of min/max per --eval)."""
    if not objectives:
        return [e.direction for e in evals]
    words = [w for o in objectives for w in o.replace(",", " ").split()]
    if len(words) != len(evals):
        raise EvalError(f"--objectives gives {len(words)} direction(s) for {len(evals)} --eval(s)",
                        hint="one of min/max (minimize/maximize) per --eval, in the same order")
    out = []
    for w in words:
        w = w.lower()
        if w in ("min", "minimize", "minimise"):
            out.append("minimize")
        elif w in ("max", "maximize", "maximise"):
            out.append("maximize")
        else:
            raise EvalError(f"--objectives: {w!r} is not min or max")
    return out
