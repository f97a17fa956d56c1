"""Tiny MoE checkpoints built by transformers itself (``from_config`` + ``save_pretrained``).

transformers 5 saves experts per expert (``...experts.<e>.w1.weight``), the naming Hub checkpoints
use; ``fused_copy`` writes the same model in the fused layout transformers holds in memory (its own
``state_dict()``), which is what a mergekit 0.1.5 output looks like.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from hubmerge.demo import write_tokenizer

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
             max_position_embeddings=64, tie_word_embeddings=False)
FAMILIES = {
    "mixtral": dict(intermediate_size=48, num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(intermediate_size=48, moe_intermediate_size=24, num_experts=4, num_experts_per_tok=2,
                      head_dim=8),
    # Dense first layer, shared expert, MLA attention: the shape mergekit 0.1.5 drops the experts of.
    "deepseek_v3": dict(intermediate_size=48, moe_intermediate_size=24, n_routed_experts=4, n_shared_experts=1,
                        num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=24,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_group=1, topk_group=1,
                        num_key_value_heads=4),
    # mergekit's AFMoE definition keeps experts per expert (the checkpoint layout).
    "afmoe": dict(intermediate_size=48, moe_intermediate_size=24, num_experts=4, num_experts_per_tok=2,
                  num_dense_layers=1, num_shared_experts=1, head_dim=8, layer_types=None),
}


def config_for(model_type: str):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**SMALL, **FAMILIES[model_type]})


def build(folder: Path, model_type: str, seed: int, *, like: Path | None = None, shard_size: str | None = None,
          dtype: torch.dtype = torch.bfloat16) -> Path:
    """A model of ``model_type`` saved by transformers; with ``like``, that model plus seeded noise (a
    fine-tune of it). ``shard_size`` splits the checkpoint (experts of a layer across files)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if like is None:
        model = AutoModelForCausalLM.from_config(config_for(model_type)).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(like, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.02 * torch.randn(p.shape, generator=gen)).to(p.dtype))
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(folder, **kwargs)
    write_tokenizer(Path(folder), model.config.vocab_size)
    return Path(folder)


def fused_copy(source: Path, folder: Path) -> Path:
    """``source`` rewritten in transformers' in-memory layout (fused experts), config and tokenizer kept."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    folder.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for f in source.iterdir():
        if f.suffix == ".json" and not f.name.startswith("model.safetensors"):
            shutil.copy(f, folder / f.name)
    return folder


def load_check(folder: Path) -> tuple[dict, bool]:
    """(transformers' loading report without empty entries, whether the logits are finite)."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    report = {k: sorted(v) for k, v in info.items() if v}
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 3]]), use_cache=False).logits
    return report, bool(logits.isfinite().all())


def config_of(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
