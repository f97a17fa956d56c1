"""Tiny models whose tokenizers disagree: different sizes, orders and added tokens (WordLevel tokenizers)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from hubmerge.demo import TinyShape, base_weights, write_model

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def write_vocab_tokenizer(folder: Path, words: list[str], added: tuple[str, ...] = (),
                          chat_template: str | None = None) -> None:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if added:
        tok.add_special_tokens([AddedToken(a, special=True) for a in added])
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 128}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def vocab_model(folder: Path, words: list[str], *, seed: int, added: tuple[str, ...] = (), dtype: str = "bfloat16",
                chat_template: str | None = None, arch: str = "llama", extra_rows: int = 0) -> Path:
    """A model whose embedding rows follow ``words`` + ``added`` (+ ``extra_rows`` unused padding rows)."""
    shape = TinyShape(arch=arch, vocab=len(words) + len(added) + extra_rows, layers=2)
    write_model(folder, base_weights(shape, seed), shape, dtype=dtype, tokenizer=False)
    write_vocab_tokenizer(folder, words, added, chat_template)
    return folder


def words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def row_for(tensors: dict[str, torch.Tensor], vocab: dict[str, int], name: str, token: str) -> torch.Tensor:
    return tensors[name][vocab[token]]
