"""Tiny PEFT LoRA adapters for the tests, made by PEFT itself, and PEFT's own fold as the reference."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def peft_adapter(base: Path, out: Path, *, seed: int = 0, scale: float = 0.1, dtype: torch.dtype | None = None,
                 **config) -> Path:
    """Train nothing: wrap ``base`` with a LoRA config, fill the LoRA factors with seeded noise, save.

    ``dtype`` converts the saved factors (adapters are often published in bf16)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**config))
    gen = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = scale * torch.randn(param.shape, generator=gen)
    peft_model.save_pretrained(str(out))
    if dtype is not None:
        weights = load_file(str(out / "adapter_model.safetensors"))
        save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(out / "adapter_model.safetensors"))
    return out


def peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """The reference: PEFT's merge_and_unload on the base as transformers loads it (what mergekit does)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def hand_adapter(out: Path, tensors: dict[str, torch.Tensor], **config) -> Path:
    """An adapter folder written without PEFT: a config and the factors under PEFT's key names."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **config}
    (out / "adapter_config.json").write_text(json.dumps(doc))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "adapter_model.safetensors"))
    return out
