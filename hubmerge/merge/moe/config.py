"""config.json of the MoE: the base's config carried into the output family's transformers config class,
with the expert counts set, written as mergekit-moe 0.1.5 writes it (``save_pretrained``'s JSON, or for
DeepSeek-MoE, which transformers does not ship, the plain dictionary with its remote-code ``auto_map``)."""

from __future__ import annotations

import json
import logging
from typing import Any

from hubmerge.errors import PlanError
from hubmerge.merge.moe.families import Family

logger = logging.getLogger(__name__)

DEEPSEEK_AUTO_MAP = {
    "AutoConfig": "deepseek-ai/deepseek-moe-16b-base--configuration_deepseek.DeepseekConfig",
    "AutoModel": "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekModel",
    "AutoModelForCausalLM": "deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekForCausalLM",
}


def base_config(raw: dict[str, Any], name: str):
    """The base's config as transformers reads it (never with remote code)."""
    from transformers import CONFIG_MAPPING

    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise PlanError(f"base_model {name}: transformers has no configuration for model_type {model_type!r}",
                        hint="the base must be a Llama, Mistral, Qwen2 or Qwen3 model")
    config = CONFIG_MAPPING[model_type].from_dict(dict(raw))
    config._name_or_path = name
    return config


def moe_config(family: Family, base, *, experts: int, shared: int, per_token: int, dtype) -> Any:
    """The output config (a transformers config object, or a dict for DeepSeek-MoE). ``dtype``: a torch
    dtype or None (the base's dtype stays)."""
    import transformers

    if family.id == "deepseek":
        out = base.to_dict()
        out.update({"architectures": [family.architecture], "model_type": "deepseek", "n_routed_experts": experts,
                    "n_shared_experts": shared or None, "num_experts_per_tok": per_token,
                    "first_k_dense_replace": 0, "moe_layer_freq": 1, "scoring_func": "softmax",
                    "norm_topk_prob": True, "moe_intermediate_size": out["intermediate_size"],
                    "auto_map": dict(DEEPSEEK_AUTO_MAP)})
        if dtype is not None:
            out["torch_dtype"] = str(dtype).removeprefix("torch.")
        return out
    if family.id == "mixtral":
        if not isinstance(base, transformers.MistralConfig):  # a Llama base goes through Mistral's config first
            as_mistral = transformers.MistralConfig(**base.to_dict())
            as_mistral.sliding_window = None
            as_mistral.max_position_embeddings = base.max_position_embeddings
            base = as_mistral
        out = transformers.MixtralConfig(**base.to_dict())
        out.num_local_experts = experts
        out.sliding_window = None
    elif family.id == "qwen2_moe":
        out = transformers.Qwen2MoeConfig(**base.to_dict())
        out.num_experts = experts
        out.decoder_sparse_step = 1
        out.sliding_window = None
        out.use_sliding_window = False
        out.shared_expert_intermediate_size = out.intermediate_size
        out.moe_intermediate_size = out.intermediate_size
    elif family.id == "qwen3_moe":
        out = transformers.Qwen3MoeConfig(**base.to_dict())
        out.num_experts = experts
        out.decoder_sparse_step = 1
        out.moe_intermediate_size = out.intermediate_size
    else:  # pragma: no cover - the family table and this function change together
        raise PlanError(f"no config writer for output family {family.id}")
    out.architectures = [family.architecture]
    out.num_experts_per_tok = per_token
    if family.id != "mixtral":
        out.norm_topk_prob = True
    if dtype is not None or family.id == "mixtral":  # mergekit sets Mixtral's dtype even when it is unknown
        out.dtype = dtype
    if experts & (experts - 1):
        logger.warning("the MoE has %d experts, not a power of two: llama.cpp cannot run it", experts)
    return out


def config_text(config: Any) -> str:
    """config.json's bytes as mergekit-moe writes them."""
    if isinstance(config, dict):
        return json.dumps(config, indent=4)
    return config.to_json_string(use_diff=True)


def config_dict(config: Any) -> dict[str, Any]:
    return json.loads(config_text(config))
