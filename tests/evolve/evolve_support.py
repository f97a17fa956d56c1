"""What the evolve tests share: the search spec over the two test-made fine-tunes (tasks.py), and
reference evaluations computed with transformers alone (independent of hubmerge.evolve)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

# Task arithmetic over the two task vectors, each weight searched. The ranges are wide on purpose: their
# centre (1.25, 1.25) is worse than a 50/50 linear merge, so beating it takes a real search.
SEARCH_SPEC = """\
merge_method: task_arithmetic
base_model: base
models:
  - model: task_a
    parameters: {weight: {search: [0.0, 2.5]}}
  - model: task_b
    parameters: {weight: {search: [0.0, 2.5]}}
dtype: float32
"""
WEIGHT_A, WEIGHT_B = "models[0].parameters.weight", "models[1].parameters.weight"


@dataclass(frozen=True)
class TaskModels:
    root: Path
    base: Path
    task_a: Path
    task_b: Path
    ppl: Path  # combined.txt: both tasks' sequences, one per line
    jsonl: Path  # combined.jsonl: the same as prompt/answer items
    spec: Path  # SEARCH_SPEC, beside the models (relative paths)

    def concrete_spec(self, a: float, b: float, name: str) -> Path:
        path = self.root / name
        path.write_text(SEARCH_SPEC.replace("{search: [0.0, 2.5]}", str(a), 1).replace("{search: [0.0, 2.5]}", str(b)))
        return path


def load_reference(folder: Path):
    """The folder as transformers loads it on its own (from_pretrained), with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


def encode(tok, text: str) -> torch.Tensor:
    """Token ids (1, n) with the BOS token first: the demo tokenizer does not add it, and every scored
    token should have a context."""
    ids = tok(text, return_tensors="pt")["input_ids"]
    if ids[0, 0].item() != tok.bos_token_id:
        ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)
    return ids


def reference_line_nll(folder: Path, text_file: Path) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) per non-empty line, from transformers' mean cross-entropy loss."""
    model, tok = load_reference(folder)
    out = []
    with torch.inference_mode():
        for line in text_file.read_text().splitlines():
            if not line.strip():
                continue
            ids = encode(tok, line.strip())
            n = ids.shape[1] - 1
            out.append((float(model(input_ids=ids, labels=ids).loss) * n, n))
    return out


def reference_ppl(folder: Path, text_file: Path) -> float:
    items = reference_line_nll(folder, text_file)
    return math.exp(sum(s for s, _ in items) / sum(n for _, n in items))


@contextlib.contextmanager
def one_math_thread():
    """These models are tiny: one thread is fastest, and much faster than several on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
