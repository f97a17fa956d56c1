"""Mixture-of-experts tensor layouts, per model family: data only, no I/O.

Checkpoints on the Hub (and those transformers 5 writes with ``save_pretrained``) keep one tensor per
expert and projection (Mixtral: ``block_sparse_moe.experts.3.w1.weight``; Qwen3-MoE:
``mlp.experts.3.gate_proj.weight``). transformers 5 itself, and mergekit 0.1.5, which asks for the
model's own parameter names, see the experts *fused*, one tensor per projection for all experts::

    mlp.experts.gate_up_proj   [E, 2*I, H]   expert e: its gate rows (I) then its up rows (I)
    mlp.experts.down_proj      [E, H, I]
    mlp.gate.weight            [E, H]        the router (Mixtral's block_sparse_moe.gate.weight, renamed)

A fused tensor is the per-expert tensors laid end to end (expert 0's parts, then expert 1's, ...), so it
can be assembled by reading each piece's byte range into one buffer. ``hubmerge.sources.moe`` does that
when a model is opened; ``hubmerge moe`` (building MoE models from dense ones) can read the same table to
write what transformers 5 and mergekit expect.

Each entry was checked by building tiny models of the family with transformers 5.24 (``from_config`` +
``save_pretrained``) and merging them with mergekit-yaml 0.1.5 (see tests/merge/test_moe_mergekit.py and
the notes of issue 14). ``mergekit`` says what mergekit 0.1.5 writes for such checkpoints:

- ``fused``: the transformers 5 layout above;
- ``drops_experts``: mergekit infers the architecture, marks the fused expert tensors optional because
  the first layers are dense, then skips them (it looks for optional tensors under their fused names in
  the checkpoint only): its output has no routed experts at all. hubmerge writes them, fused.
- ``checkpoint``: mergekit's architecture definition names the checkpoint's own tensors, so it writes the
  per-expert (or older) names; hubmerge does the same (``layout = "checkpoint"``), splitting fused
  inputs back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ExpertStack:
    """One fused tensor of every expert: ``<container>.<fused>`` = for each expert e in order, the
    tensors ``<container>.<e>.<part>`` of ``parts`` concatenated along their first dimension, the
    result stacked over experts (shape ``[E, sum of the parts' rows, *rest]``)."""

    fused: str  # e.g. "gate_up_proj" (no ".weight": transformers 5 names fused experts as parameters)
    parts: tuple[str, ...]  # per-expert tensor names under ``<container>.<e>.``, e.g. ("w1.weight", "w3.weight")


@dataclass(frozen=True)
class MoeLayout:
    """How one family of MoE checkpoints maps onto the layout transformers 5 (and mergekit) use.

    ``renames`` (substring, replacement; the first occurrence, in order) turn checkpoint names into
    model names; then per-expert tensors under ``<anything>.<container>.<e>.`` are fused by ``stacks``.
    ``layout`` is the layout written: ``fused`` (transformers 5's), or ``checkpoint`` (per-expert, as
    mergekit writes for families whose definition lists per-expert names)."""

    name: str
    model_types: tuple[str, ...]  # config.json ``model_type`` values
    container: str  # where the experts live in a layer, in model names: "mlp.experts"
    stacks: tuple[ExpertStack, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()
    layout: Literal["fused", "checkpoint"] = "fused"
    mergekit: Literal["fused", "drops_experts", "checkpoint"] = "fused"
    # What building such a model needs (hubmerge moe): config keys and names, in model (output) names.
    experts_key: str = "num_experts"  # config key: number of routed experts
    top_k_key: str = "num_experts_per_tok"
    expert_intermediate_key: str = "moe_intermediate_size"  # config key: I of one expert
    router: str = "mlp.gate.weight"  # [E, H], under the layer
    shared_experts: str | None = None  # dense MLP always applied beside the routed experts, if any
    dense_layers_key: str | None = None  # config key: the first N layers are dense (no experts)


# The two per-expert naming schemes of the SwiGLU experts: Mixtral's w1 (gate), w3 (up), w2 (down), and
# the gate_proj/up_proj/down_proj names of Qwen and most others.
W123_STACKS = (ExpertStack("gate_up_proj", ("w1.weight", "w3.weight")), ExpertStack("down_proj", ("w2.weight",)))
PROJ_STACKS = (ExpertStack("gate_up_proj", ("gate_proj.weight", "up_proj.weight")),
               ExpertStack("down_proj", ("down_proj.weight",)))
BLOCK_SPARSE_TO_MLP = ((".block_sparse_moe.", ".mlp."),)

LAYOUTS: tuple[MoeLayout, ...] = (
    MoeLayout("Mixtral", ("mixtral", "minimax", "minimax_m2"), "mlp.experts", W123_STACKS, BLOCK_SPARSE_TO_MLP,
              experts_key="num_local_experts", expert_intermediate_key="intermediate_size"),
    MoeLayout("PhiMoE", ("phimoe",), "mlp.experts", W123_STACKS,
              BLOCK_SPARSE_TO_MLP + ((".mlp.gate.weight", ".mlp.router.weight"),),
              experts_key="num_local_experts", expert_intermediate_key="intermediate_size", router="mlp.router.weight"),
    MoeLayout("Qwen2-MoE", ("qwen2_moe", "qwen3_next", "qwen3_5_moe_text"), "mlp.experts", PROJ_STACKS,
              shared_experts="mlp.shared_expert"),
    MoeLayout("Qwen3-MoE", ("qwen3_moe",), "mlp.experts", PROJ_STACKS),
    MoeLayout("OLMoE", ("olmoe", "flex_olmo", "cohere2_moe"), "mlp.experts", PROJ_STACKS,
              expert_intermediate_key="intermediate_size"),
    MoeLayout("Hunyuan-MoE", ("hunyuan_v1_moe",), "mlp.experts", PROJ_STACKS, top_k_key="moe_topk",
              expert_intermediate_key="intermediate_size", router="mlp.gate.wg.weight", shared_experts="mlp.shared_mlp"),
    MoeLayout("GLM-4-MoE", ("glm4_moe",), "mlp.experts", PROJ_STACKS, experts_key="n_routed_experts",
              shared_experts="mlp.shared_experts", dense_layers_key="first_k_dense_replace"),
    MoeLayout("LongCat-Flash", ("longcat_flash",), "mlp.experts", PROJ_STACKS, experts_key="n_routed_experts",
              top_k_key="moe_topk", expert_intermediate_key="expert_ffn_hidden_size", router="mlp.router.classifier.weight"),
    MoeLayout("DeepSeek", ("deepseek_v2", "deepseek_v3", "deepseek_v32", "dots1"), "mlp.experts", PROJ_STACKS,
              mergekit="drops_experts", experts_key="n_routed_experts", shared_experts="mlp.shared_experts",
              dense_layers_key="first_k_dense_replace"),
    MoeLayout("GLM-4-MoE-Lite", ("glm4_moe_lite",), "mlp.experts", PROJ_STACKS, mergekit="drops_experts",
              experts_key="n_routed_experts", shared_experts="mlp.shared_experts"),
    MoeLayout("ERNIE-4.5-MoE", ("ernie4_5_moe",), "mlp.experts", PROJ_STACKS,
              (("mlp.moe_statics.e_score_correction_bias", "mlp.gate.moe_statics.e_score_correction_bias"),),
              mergekit="drops_experts", experts_key="moe_num_experts", top_k_key="moe_k",
              shared_experts="mlp.shared_experts", dense_layers_key="moe_layer_start_index"),
    MoeLayout("EXAONE-MoE", ("exaone_moe",), "mlp.experts", PROJ_STACKS,
              (("mlp.e_score_correction_bias", "mlp.gate.e_score_correction_bias"),), mergekit="drops_experts",
              shared_experts="mlp.shared_experts", dense_layers_key="first_k_dense_replace"),
    MoeLayout("Jamba", ("jamba",), "feed_forward.experts", PROJ_STACKS, expert_intermediate_key="intermediate_size",
              router="feed_forward.router.weight"),
    MoeLayout("LFM2-MoE", ("lfm2_moe",), "feed_forward.experts", W123_STACKS, mergekit="drops_experts",
              router="feed_forward.gate.weight", dense_layers_key="num_dense_layers"),
    # Granite keeps all experts in one tensor on disk already; only the names change.
    MoeLayout("GraniteMoE", ("granitemoe", "granitemoeshared"), "block_sparse_moe.experts", (),
              (("block_sparse_moe.input_linear.weight", "block_sparse_moe.experts.gate_up_proj"),
               ("block_sparse_moe.output_linear.weight", "block_sparse_moe.experts.down_proj"),
               ("block_sparse_moe.router.layer.weight", "block_sparse_moe.router.weight")),
              experts_key="num_local_experts", expert_intermediate_key="intermediate_size",
              router="block_sparse_moe.router.weight", shared_experts="shared_mlp"),
    # mergekit's definition of the hybrid names the checkpoint's tensors: fused-named inputs go back.
    MoeLayout("GraniteMoE-Hybrid", ("granitemoehybrid",), "block_sparse_moe", (),
              (("block_sparse_moe.experts.gate_up_proj", "block_sparse_moe.input_linear.weight"),
               ("block_sparse_moe.experts.down_proj", "block_sparse_moe.output_linear.weight"),
               ("block_sparse_moe.router.weight", "block_sparse_moe.router.layer.weight")),
              layout="checkpoint", mergekit="checkpoint", experts_key="num_local_experts",
              expert_intermediate_key="intermediate_size", router="block_sparse_moe.router.layer.weight",
              shared_experts="shared_mlp"),
    # mergekit's AFMoE definition lists each expert's tensors: per-expert output, fused inputs split.
    MoeLayout("AFMoE", ("afmoe",), "mlp.experts", PROJ_STACKS, layout="checkpoint", mergekit="checkpoint",
              router="mlp.router.gate.weight", shared_experts="mlp.shared_experts", dense_layers_key="num_dense_layers"),
)

BY_MODEL_TYPE: dict[str, MoeLayout] = {t: layout for layout in LAYOUTS for t in layout.model_types}


def layout_for(config: dict) -> MoeLayout | None:
    """The MoE layout of a model's config.json, or None (dense, or a family whose experts need no change)."""
    model_type = config.get("model_type")
    return BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None
