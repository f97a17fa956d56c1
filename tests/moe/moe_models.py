"""Tiny dense models built by transformers itself (``from_config`` + ``save_pretrained``), and fine-tunes of
them, to build MoEs from: deterministic, a word-level tokenizer each, a few layers."""

from __future__ import annotations

from pathlib import Path

import torch

from hubmerge.demo import write_tokenizer

SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def dense_family(root: Path, arch: str, *, names=("base", "e1", "e2", "e3"), dtype=torch.bfloat16,
                 seed: int = 0, tie: bool = False, **overrides) -> dict[str, Path]:
    """``root/<name>`` for a base model of ``arch`` (llama, mistral, qwen2, qwen3) and fine-tunes of it (the
    base plus seeded noise on every weight)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch, **{**SHAPE, "tie_word_embeddings": tie, **overrides})
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    out = {}
    for k, name in enumerate(names):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(state)
        if k:
            gen = torch.Generator().manual_seed(seed * 100 + k)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_((0.02 * torch.randn(p.shape, generator=gen)).to(p.dtype))
        folder = root / name
        model.save_pretrained(folder)
        write_tokenizer(folder, SHAPE["vocab_size"])
        out[name] = folder
    return out
