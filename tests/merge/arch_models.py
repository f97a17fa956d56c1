"""Tiny models built by transformers itself (config class -> model class -> save_pretrained), for the module and
architecture tests: multimodal and encoder-decoder families, and every text family mergekit 0.1.5 defines.

Weights are drawn from seeded generators (one seed per model), then saved in bfloat16, as transformers writes
them. Where a family's published checkpoints differ from what transformers 5 writes (Gemma 3's vision tower
under ``vision_model.``, Qwen2-VL's flat layer count), ``hub_layout`` rewrites the files into the published
form, which transformers loads too; mergekit 0.1.5 reads only that form.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
            vocab_size=300, max_position_embeddings=256)
TOKENS = dict(image_token_id=299, video_token_id=298, vision_start_token_id=297, vision_end_token_id=296)


def _qwen_vl(config_cls, vision: dict[str, Any], rope: dict[str, Any], head_dim: int | None = None, **text_extra):
    text = dict(TEXT, rope_scaling=rope, **({"head_dim": head_dim} if head_dim else {}), **text_extra)
    return config_cls(text_config=text, vision_config=vision, **TOKENS)


def multimodal_configs() -> dict[str, tuple[Any, str]]:
    """family -> (config, model class name): tiny, with every stack of layers a different depth."""
    vision_qwen25 = dict(depth=3, hidden_size=32, out_hidden_size=64, num_heads=2, intermediate_size=64, patch_size=14,
                         spatial_merge_size=2, fullatt_block_indexes=[2], window_size=56)
    return {
        "gemma3": (transformers.Gemma3Config(
            text_config=dict(TEXT, head_dim=32, sliding_window=16),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                               image_size=28, patch_size=14, vision_use_head=False),
            mm_tokens_per_image=4, image_token_index=299, boi_token_index=297, eoi_token_index=298),
            "Gemma3ForConditionalGeneration"),
        "qwen2_vl": (_qwen_vl(transformers.Qwen2VLConfig,
                              dict(depth=3, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                                   spatial_merge_size=2), {"type": "mrope", "mrope_section": [4, 6, 6]}),
                     "Qwen2VLForConditionalGeneration"),
        "qwen2_5_vl": (_qwen_vl(transformers.Qwen2_5_VLConfig, vision_qwen25,
                                {"type": "mrope", "mrope_section": [4, 6, 6]}),
                       "Qwen2_5_VLForConditionalGeneration"),
        "qwen3_vl": (_qwen_vl(transformers.Qwen3VLConfig,
                              dict(depth=3, hidden_size=32, out_hidden_size=64, num_heads=2, intermediate_size=64,
                                   patch_size=14, spatial_merge_size=2, deepstack_visual_indexes=[0, 1, 2],
                                   num_position_embeddings=16),
                              {"rope_type": "default", "mrope_section": [4, 6, 6], "mrope_interleaved": True},
                              head_dim=32),
                     "Qwen3VLForConditionalGeneration"),
        "qwen3_vl_moe": (_qwen_vl(transformers.Qwen3VLMoeConfig,
                                  dict(depth=3, hidden_size=32, out_hidden_size=64, num_heads=2, intermediate_size=64,
                                       patch_size=14, spatial_merge_size=2, deepstack_visual_indexes=[0, 1, 2],
                                       num_position_embeddings=16),
                                  {"rope_type": "default", "mrope_section": [4, 6, 6], "mrope_interleaved": True},
                                  head_dim=32, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2),
                         "Qwen3VLMoeForConditionalGeneration"),
        "mistral3": (transformers.Mistral3Config(
            text_config=dict(TEXT, model_type="mistral", head_dim=32),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                               head_dim=16, image_size=56, patch_size=14),
            image_token_index=299, spatial_merge_size=2), "Mistral3ForConditionalGeneration"),
        "llama4": (transformers.Llama4Config(
            text_config=dict(TEXT, head_dim=32, intermediate_size_mlp=128, num_local_experts=2, num_experts_per_tok=1,
                             interleave_moe_layer_step=2, no_rope_layers=[1, 1, 1, 0], attention_chunk_size=64),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                               image_size=28, patch_size=14, vision_output_dim=64, projector_input_dim=64,
                               projector_output_dim=64, pixel_shuffle_ratio=0.5),
            image_token_index=299, boi_token_index=297, eoi_token_index=298), "Llama4ForConditionalGeneration"),
        # no mergekit definition (its inference writes no text model): checked against independent expectations
        "llava": (transformers.LlavaConfig(
            text_config=dict(TEXT, model_type="llama"),
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                               num_attention_heads=2, image_size=28, patch_size=14, projection_dim=32),
            image_token_index=299), "LlavaForConditionalGeneration"),
        # T5 v1.1 (gated-gelu, untied head, as Flan-T5): the layout mergekit's T5 definition describes.
        "t5": (transformers.T5Config(vocab_size=300, d_model=32, d_kv=16, d_ff=64, num_layers=3, num_decoder_layers=2,
                                     num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                     decoder_start_token_id=0), "T5ForConditionalGeneration"),
        "whisper": (transformers.WhisperConfig(
            vocab_size=300, d_model=32, encoder_layers=3, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=32,
            max_target_positions=64, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            suppress_tokens=[], begin_suppress_tokens=[]), "WhisperForConditionalGeneration"),
    }


# --- text families: every architecture of mergekit 0.1.5 that transformers 5 builds --------------------------

COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
              head_dim=16, vocab_size=128, max_position_embeddings=64, n_embd=32, n_layer=3, n_head=2, n_positions=64,
              n_inner=64, dim=32, hidden_dim=64, n_layers=3, n_heads=2, moe_intermediate_size=32,
              shared_expert_intermediate_size=32, num_local_experts=4, num_experts=4, n_routed_experts=4,
              num_experts_per_tok=2, state_size=8, conv_kernel=4, sliding_window=16, type_vocab_size=2,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Per model type: what a tiny config needs beyond COMMON, and the variants of a family that mergekit's definition
# describes (Cohere with q/k norms as Command R+, Falcon with an untied head as mergekit's definition needs).
SPECIAL: dict[str, dict[str, Any]] = {
    "mamba": dict(expand=2, time_step_rank=4),
    "granitemoehybrid": dict(layer_types=["mamba", "attention", "mamba"], mamba_n_heads=4, mamba_d_head=16,
                             mamba_d_state=8, mamba_n_groups=1, mamba_expand=2, shared_intermediate_size=64,
                             num_local_experts=0),
    "lfm2": dict(layer_types=["conv", "full_attention", "conv"], block_ff_dim=64, block_auto_adjust_ff_dim=False),
    "glm4_moe": dict(first_k_dense_replace=1, n_group=1, topk_group=1),
    "phi": dict(partial_rotary_factor=0.5),
    "falcon": dict(new_decoder_architecture=True, num_kv_heads=1, tie_word_embeddings=False),
    "cohere": dict(use_qk_norm=True),
}


def tiny_text_config(model_type: str, architecture: str):
    cls = CONFIG_MAPPING[model_type]
    accepted = set(inspect.signature(cls.__init__).parameters)
    default = cls()
    kwargs = {k: v for k, v in {**COMMON, **SPECIAL.get(model_type, {})}.items()
              if not isinstance(getattr(cls, k, None), property) and (k in accepted or hasattr(default, k))}
    config = cls(**kwargs)
    config.architectures = [architecture]
    return config


def build(folder: Path, config, model_class: str, seed: int, *, dtype=torch.bfloat16) -> Path:
    """One model: the class from the config, weights ~ N(0, 0.05) from ``seed``, saved by transformers."""
    cls = getattr(transformers, model_class)
    config.dtype = torch.float32  # Apertus' activation builds parameters with config.dtype (a str after a save)
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    model.to(dtype).save_pretrained(folder)
    return folder


def build_family(root: Path, config_factory: Callable[[], Any], model_class: str, seeds=(0, 1, 2)) -> list[Path]:
    return [build(root / f"m{s}", config_factory(), model_class, s) for s in seeds]


def hub_layout(folder: Path, family: str) -> None:
    """Rewrite a transformers-5-saved checkpoint into the layout its family's Hub checkpoints use."""
    if family == "gemma3":  # Hub: vision_tower.vision_model.*; transformers 5 writes vision_tower.*
        path = folder / "model.safetensors"
        tensors = load_file(str(path))
        renamed = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
                   for k, v in tensors.items()}
        save_file(renamed, str(path), metadata={"format": "pt"})
    if family == "qwen2_vl":  # Hub configs keep the text model's keys at the top level too
        path = folder / "config.json"
        config = json.loads(path.read_text())
        config["num_hidden_layers"] = config["text_config"]["num_hidden_layers"]
        path.write_text(json.dumps(config, indent=2))


def load_checked(folder: Path):
    """Load a model folder with transformers: (model, loading info). Raises if its class is unknown."""
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = getattr(transformers, config.architectures[0])
    model, info = cls.from_pretrained(folder, output_loading_info=True, dtype=torch.float32)
    return model, info


def forward_finite(model) -> bool:
    """Run the model on a few tokens (text only; audio features for Whisper) and check every output is finite."""
    ids = torch.tensor([[1, 5, 7, 9]])
    config = model.config
    if type(model).__name__.endswith("ForMultipleChoice"):
        ids = ids.unsqueeze(0).repeat(1, 2, 1)  # (batch, choices, tokens)
    kwargs: dict[str, Any] = {"input_ids": ids}
    if getattr(config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = torch.tensor([[1, 3]])
        if config.model_type == "whisper":
            kwargs = {"input_features": torch.randn(1, config.num_mel_bins, 2 * config.max_source_positions,
                                                    generator=torch.Generator().manual_seed(0)),
                      "decoder_input_ids": kwargs["decoder_input_ids"]}
    if config.model_type == "llama4":  # its text-only forward fails in transformers 5.24; the text model's does not
        model = model.language_model
    with torch.no_grad():
        out = model(**kwargs)
    tensors = [v for v in (out.values() if hasattr(out, "values") else [out]) if isinstance(v, torch.Tensor)]
    return bool(tensors) and all(torch.isfinite(t).all() for t in tensors)


def flat_config(config: dict, prefix: str = "") -> dict:
    """{"text_config.num_hidden_layers": 4, ...}: nested sections flattened to dotted keys, for comparing configs."""
    out = {}
    for k, v in config.items():
        out.update(flat_config(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out
