"""Tiny deterministic models for ``hubmerge demo`` and the tests: real configs that transformers loads,
real tokenizers, weights from a seeded generator. Fine-tunes are the base plus small seeded deltas."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinyShape:
    arch: str = "llama"  # llama | qwen2 | mistral | gemma2 | gpt2
    vocab: int = 128
    hidden: int = 64
    intermediate: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    tie_embeddings: bool = False


def _config(shape: TinyShape, dtype: str) -> dict:
    if shape.arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": shape.vocab,
                "n_embd": shape.hidden, "n_layer": shape.layers, "n_head": shape.heads, "n_positions": 128,
                "n_inner": shape.intermediate, "bos_token_id": 1, "eos_token_id": 2,
                "tie_word_embeddings": True, "torch_dtype": dtype}
    names = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2"),
             "mistral": ("MistralForCausalLM", "mistral"), "gemma2": ("Gemma2ForCausalLM", "gemma2")}
    arch, model_type = names[shape.arch]
    cfg = {"architectures": [arch], "model_type": model_type, "vocab_size": shape.vocab,
           "hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
           "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
           "num_key_value_heads": shape.kv_heads, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
           "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
           "tie_word_embeddings": shape.tie_embeddings, "torch_dtype": dtype, "rope_theta": 10000.0}
    if shape.arch == "gemma2":
        cfg.update({"head_dim": shape.hidden // shape.heads, "hidden_activation": "gelu_pytorch_tanh",
                    "query_pre_attn_scalar": shape.hidden // shape.heads, "sliding_window": 64,
                    "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
                    "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention"
                                    for i in range(shape.layers)]})
        cfg.pop("hidden_act")
    return cfg


def tensor_shapes(shape: TinyShape) -> dict[str, tuple[int, ...]]:
    h, i, v = shape.hidden, shape.intermediate, shape.vocab
    head_dim = h // shape.heads
    kv = shape.kv_heads * head_dim
    out: dict[str, tuple[int, ...]] = {}
    if shape.arch == "gpt2":
        out["transformer.wte.weight"] = (v, h)
        out["transformer.wpe.weight"] = (128, h)
        for n in range(shape.layers):
            p = f"transformer.h.{n}."
            out.update({p + "ln_1.weight": (h,), p + "ln_1.bias": (h,), p + "attn.c_attn.weight": (h, 3 * h),
                        p + "attn.c_attn.bias": (3 * h,), p + "attn.c_proj.weight": (h, h),
                        p + "attn.c_proj.bias": (h,), p + "ln_2.weight": (h,), p + "ln_2.bias": (h,),
                        p + "mlp.c_fc.weight": (h, i), p + "mlp.c_fc.bias": (i,),
                        p + "mlp.c_proj.weight": (i, h), p + "mlp.c_proj.bias": (h,)})
        out["transformer.ln_f.weight"] = (h,)
        out["transformer.ln_f.bias"] = (h,)
        return out
    out["model.embed_tokens.weight"] = (v, h)
    for n in range(shape.layers):
        p = f"model.layers.{n}."
        out.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                    p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                    p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                    p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                    p + "post_attention_layernorm.weight": (h,)})
        if shape.arch == "qwen2":
            out.update({p + "self_attn.q_proj.bias": (h,), p + "self_attn.k_proj.bias": (kv,),
                        p + "self_attn.v_proj.bias": (kv,)})
        if shape.arch == "gemma2":
            out.update({p + "pre_feedforward_layernorm.weight": (h,), p + "post_feedforward_layernorm.weight": (h,)})
    out["model.norm.weight"] = (h,)
    if not shape.tie_embeddings and shape.arch != "gemma2":
        out["lm_head.weight"] = (v, h)
    return out


def _tensor(gen: torch.Generator, name: str, dims: tuple[int, ...]) -> torch.Tensor:
    if name.endswith("norm.weight") or ".ln_" in name and name.endswith("weight"):
        return 1.0 + 0.02 * torch.randn(dims, generator=gen)
    return 0.05 * torch.randn(dims, generator=gen)


def base_weights(shape: TinyShape, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: _tensor(gen, name, dims) for name, dims in tensor_shapes(shape).items()}


def finetune_weights(base: dict[str, torch.Tensor], seed: int, scale: float = 0.01) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: t + scale * torch.randn(t.shape, generator=gen) for name, t in base.items()}


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer over ``vocab_size`` tokens, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = specials + [f"w{i}" for i in range(vocab_size - len(specials))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 128}, indent=2) + "\n")


def write_model(folder: Path, weights: dict[str, torch.Tensor], shape: TinyShape, *, dtype: str = "bfloat16",
                shards: int = 1, tokenizer: bool = True, license: str | None = "apache-2.0",
                base_model: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    tensors = {k: v.to(torch_dtype).contiguous() for k, v in weights.items()}
    names = list(tensors)
    if shards <= 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        per = -(-len(names) // shards)
        weight_map = {}
        for s in range(shards):
            part = names[s * per:(s + 1) * per]
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k] for k in part}, str(folder / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(_config(shape, dtype), indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    if tokenizer:
        write_tokenizer(folder, shape.vocab)
    front = ["---"]
    if license:
        front.append(f"license: {license}")
    if base_model:
        front.append(f"base_model: {base_model}")
    front.append("---")
    (folder / "README.md").write_text("\n".join(front) + f"\n\n# {folder.name}\n\nA tiny generated test model.\n")
    return folder


def make_family(root: Path, shape: TinyShape = TinyShape(), *, names=("base", "chat", "math", "code"),
                seed: int = 1234, dtype: str = "bfloat16", shards: int = 1) -> dict[str, Path]:
    """A base model and fine-tunes of it, each in ``root/<name>``."""
    base = base_weights(shape, seed)
    out = {names[0]: write_model(root / names[0], base, shape, dtype=dtype, shards=shards)}
    for k, name in enumerate(names[1:], start=1):
        out[name] = write_model(root / name, finetune_weights(base, seed + k), shape, dtype=dtype, shards=shards)
    return out
