"""Tiny generated models for the extract-lora and tokensurgeon tests, and mergekit's CLIs as references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from hubmerge.demo import TinyShape, base_weights, write_model

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def finetune(base: dict[str, torch.Tensor], *, seed: int, rank: int = 3, noise: float = 1e-4,
             changed_rows: int = 5, unchanged: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A fine-tune of ``base`` whose linear deltas are rank ``rank`` plus small full-rank noise (so the SVD
    has a clear cut), with a few embedding rows, the output head and layer 0's norms changed, and the
    tensors named in ``unchanged`` (and everything else) left as they are."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in base.items():
        if name in unchanged:
            out[name] = w.clone()
        elif w.ndim == 2 and "embed" not in name and "lm_head" not in name and "wte" not in name and "wpe" not in name:
            m, n = w.shape
            low = torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen) / rank ** 0.5
            out[name] = w + 0.02 * low + noise * torch.randn(m, n, generator=gen)
        elif ("embed_tokens" in name or "wte" in name) and changed_rows:
            new = w.clone()
            new[-changed_rows:] += 0.01 * torch.randn(changed_rows, w.shape[1], generator=gen)  # new chat tokens
            out[name] = new
        elif "lm_head" in name or ("layers.0." in name and "norm" in name):
            out[name] = w + 0.01 * torch.randn(w.shape, generator=gen)
        else:
            out[name] = w.clone()
    return out


def lora_family(root: Path, *, arch: str = "llama", tie: bool = False, seed: int = 11,
                unchanged: tuple[str, ...] = ("model.layers.1.self_attn.o_proj.weight",), dtype: str = "float32",
                layers: int = 2) -> dict[str, Path]:
    shape = TinyShape(arch=arch, layers=layers, tie_embeddings=tie)
    base = base_weights(shape, seed)
    return {"base": write_model(root / "base", base, shape, dtype=dtype),
            "ft": write_model(root / "ft", finetune(base, seed=seed + 1, unchanged=unchanged), shape, dtype=dtype),
            "shape": shape}


def write_vocab_tokenizer(folder: Path, words: list[str], *, specials: dict[str, str], added: tuple[str, ...] = ()):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if added:
        tok.add_special_tokens([AddedToken(a, special=True) for a in added])
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def vocab_model(folder: Path, words: list[str], *, seed: int, specials: dict[str, str], hidden: int = 64,
                arch: str = "llama", tie: bool = False, added: tuple[str, ...] = (), dtype: str = "float32") -> Path:
    shape = TinyShape(arch=arch, vocab=len(words) + len(added), hidden=hidden, layers=2, tie_embeddings=tie)
    write_model(folder, base_weights(shape, seed), shape, dtype=dtype, tokenizer=False)
    write_vocab_tokenizer(folder, words, specials=specials, added=added)
    ids = {k: words.index(v) for k, v in specials.items() if v in words}
    config = json.loads((folder / "config.json").read_text())
    config.update({"bos_token_id": ids.get("bos_token"), "eos_token_id": ids.get("eos_token"),
                   "pad_token_id": ids.get("pad_token")})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _exe(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_mergekit_extract(model: Path, base: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """mergekit-extract-lora 0.1.5 (absolute paths: its card writer looks relative ones up on the Hub)."""
    proc = subprocess.run([_exe("mergekit-extract-lora"), "--model", str(model.resolve()), "--base-model",
                           str(base.resolve()), "--out-path", str(out.resolve()), *extra],
                          env=_offline_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_mergekit_tokensurgeon(model: Path, donor: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([_exe("mergekit-tokensurgeon"), str(model.resolve()), str(donor.resolve()),
                           str(out.resolve()), *extra], env=_offline_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
