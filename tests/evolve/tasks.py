"""Two tiny fine-tunes made by the tests themselves: a random Llama-shaped base from hubmerge.demo, and
two copies trained with torch for a few dozen steps on different synthetic sequence tasks.

Task A counts up on w0..w29:   "w5 w6"  -> "w7".
Task B counts down on w30..w59: "w41 w40" -> "w39".
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from hubmerge.demo import TinyShape, base_weights, write_model

SHAPE = TinyShape(arch="llama", vocab=64, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2)
WORDS = SHAPE.vocab - 4  # w0 .. w59


def task_a() -> list[tuple[str, str]]:
    return [(f"w{x} w{x + 1}", f"w{x + 2}") for x in range(0, 28)]


def task_b() -> list[tuple[str, str]]:
    return [(f"w{x + 1} w{x}", f"w{x - 1}") for x in range(31, 59)]


def _ids(text: str) -> list[int]:
    return [1] + [4 + int(w[1:]) for w in text.split()]  # <s> then the words (the demo tokenizer's ids)


def train(weights: dict[str, torch.Tensor], pairs: list[tuple[str, str]], *, steps: int, seed: int,
          lr: float = 3e-3) -> dict[str, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from hubmerge.demo import _config

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in _config(SHAPE, "float32").items()
                                            if k not in ("architectures", "model_type", "torch_dtype")}))
    model.load_state_dict(weights)
    seqs = torch.tensor([_ids(p + " " + a) for p, a in pairs])
    labels = seqs.clone()
    labels[:, 0] = -100
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=seqs, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_models(root: Path, *, steps: int = 40) -> dict[str, Path]:
    base = base_weights(SHAPE, 7)
    out = {"base": write_model(root / "base", base, SHAPE, dtype="float32")}
    out["task_a"] = write_model(root / "task_a", train(base, task_a(), steps=steps, seed=1), SHAPE, dtype="float32")
    out["task_b"] = write_model(root / "task_b", train(base, task_b(), steps=steps, seed=2), SHAPE, dtype="float32")
    return out


def write_evals(root: Path) -> dict[str, Path]:
    """The combined evaluation (both tasks), as a text file for perplexity and as JSONL items."""
    pairs = task_a() + task_b()
    random.Random(0).shuffle(pairs)
    ppl = root / "combined.txt"
    ppl.write_text("\n".join(f"{p} {a}" for p, a in pairs) + "\n")
    items = root / "combined.jsonl"
    items.write_text("\n".join(json.dumps({"prompt": p, "answer": a}) for p, a in pairs) + "\n")
    return {"ppl": ppl, "jsonl": items}
