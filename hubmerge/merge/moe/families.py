"""The MoE output families mergekit-moe 0.1.5 writes, as data: which inputs each takes, how it stores its
experts and shared expert, which transformers class loads it.

Expert storage follows what mergekit-moe 0.1.5 writes under transformers 5: Mixtral and Qwen3-MoE in the
fused layout transformers 5 keeps in memory (``mlp.experts.gate_up_proj`` [E, 2I, H] = every expert's
gate_proj rows then its up_proj rows; ``mlp.experts.down_proj`` [E, H, I]), Qwen2-MoE and DeepSeek one
tensor per expert (``mlp.experts.<e>.gate_proj.weight``...; transformers fuses Qwen2-MoE's on load,
DeepSeek needs the model's own remote code). The router of layer i is ``mlp.gate.weight`` [E, H]. The names
come from the MoE layouts table that reading MoE checkpoints uses (``hubmerge.sources.moe_layouts``).
"""

from __future__ import annotations

from dataclasses import dataclass

from hubmerge.errors import PlanError
from hubmerge.sources.moe_layouts import BY_MODEL_TYPE, MoeLayout
from hubmerge.spec.moe import FAMILIES, MoESpec

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # a dense MLP's tensors, as every accepted input names them
# The dense projection each per-expert tensor of the MoE layouts table (``sources.moe_layouts``) comes from:
# Mixtral's w1/w3/w2 are the gate/up/down projections (as mergekit-moe maps them).
DENSE_OF_PART = {"w1.weight": "gate_proj", "w3.weight": "up_proj", "w2.weight": "down_proj",
                 "gate_proj.weight": "gate_proj", "up_proj.weight": "up_proj", "down_proj.weight": "down_proj"}


@dataclass(frozen=True)
class Family:
    id: str
    input_types: tuple[str, ...]  # model_type of the base and every expert
    architecture: str  # the ``architectures`` entry of its config.json
    layout_type: str  # the model_type whose entry of the MoE layouts table names its experts and router
    fused: bool  # experts written fused (transformers 5 layout) rather than one tensor per expert (mergekit-moe's choice)
    shared: bool = False  # takes a shared expert (its place: the layout's ``shared_experts``)
    shared_gated: bool = False  # a sigmoid gate row per layer for the shared expert (Qwen2-MoE)
    native: bool = True  # transformers has the model class (DeepSeek-MoE v1 needs remote code)

    @property
    def layout(self) -> MoeLayout:
        return BY_MODEL_TYPE[self.layout_type]

    @property
    def display(self) -> str:
        return FAMILIES[self.id]

    def refusal(self, spec: MoESpec, model_types: list[str]) -> str | None:
        """Why this family cannot hold the recipe (mergekit-moe's rules), or None when it can."""
        shared = spec.shared_experts
        if not self.shared and shared:
            return "it has no shared expert"
        if self.shared_gated:
            if len(shared) != 1:
                return "it needs exactly one shared expert"
            if spec.gate_mode != "random" and not shared[0].positive_prompts:
                return "its shared expert needs prompts (it has its own gate)"
        elif shared:
            if len(shared) > 1:
                return "it takes at most one shared expert"
            if shared[0].positive_prompts or shared[0].negative_prompts:
                return "its shared expert has no gate, so it takes no prompts"
        if len(set(model_types)) != 1:
            return "it needs the base and every expert to share one architecture"
        if model_types[0] not in self.input_types:
            return f"it is built from {' or '.join(self.input_types)} models, not {model_types[0]}"
        return None


TABLE: dict[str, Family] = {
    "mixtral": Family("mixtral", ("llama", "mistral"), "MixtralForCausalLM", "mixtral", fused=True),
    # DeepSeek-MoE v1 (remote code) names its experts as DeepSeek-V2/V3 do.
    "deepseek": Family("deepseek", ("llama", "mistral"), "DeepseekForCausalLM", "deepseek_v3", fused=False,
                       shared=True, native=False),
    "qwen2_moe": Family("qwen2_moe", ("llama", "mistral", "qwen2"), "Qwen2MoeForCausalLM", "qwen2_moe", fused=False,
                        shared=True, shared_gated=True),
    "qwen3_moe": Family("qwen3_moe", ("qwen3",), "Qwen3MoeForCausalLM", "qwen3_moe", fused=True),
}


def select_family(spec: MoESpec, model_types: list[str]) -> Family:
    """mergekit-moe's choice: among the families ``architecture`` allows and that can hold the recipe,
    Mixtral if possible, else the first in its order."""
    refusals = {f: TABLE[f].refusal(spec, model_types) for f in spec.families}
    fits = [f for f, why in refusals.items() if why is None]
    if not fits:
        detail = "; ".join(f"{TABLE[f].display}: {why}" for f, why in refusals.items())
        path = "architecture" if spec.raw.get("architecture") is not None else "experts"
        raise PlanError(f"{path}: no output family can hold this recipe ({detail})",
                        hint="Mixtral and DeepSeek-MoE take Llama/Mistral experts, Qwen-MoE also Qwen2 experts with "
                             "one prompted shared expert, Qwen3-MoE Qwen3 experts")
    return TABLE["mixtral"] if "mixtral" in fits else TABLE[fits[0]]


# -- tensor names (``prefix``: the layer stack, e.g. "model.layers") -----------------------------------


def router_name(family: Family, prefix: str, layer: int) -> str:
    return f"{prefix}.{layer}.{family.layout.router}"


def shared_gate_name(family: Family, prefix: str, layer: int) -> str:
    return f"{prefix}.{layer}.{family.layout.shared_experts}_gate.weight"


def fused_tensors(family: Family, prefix: str, layer: int) -> list[tuple[str, tuple[str, ...]]]:
    """(fused tensor name, the dense projections each expert contributes to it, in order) of a layer."""
    container = f"{prefix}.{layer}.{family.layout.container}"
    return [(f"{container}.{stack.fused}", tuple(DENSE_OF_PART[p] for p in stack.parts))
            for stack in family.layout.stacks]


def expert_tensors(family: Family, prefix: str, layer: int, expert: int) -> list[tuple[str, str]]:
    """(per-expert tensor name, the dense projection it is) of one expert of a layer."""
    container = f"{prefix}.{layer}.{family.layout.container}.{expert}"
    return [(f"{container}.{part}", DENSE_OF_PART[part]) for stack in family.layout.stacks for part in stack.parts]


def shared_tensors(family: Family, prefix: str, layer: int) -> list[tuple[str, str]]:
    """(shared-expert tensor name, the dense projection it is) of a layer."""
    return [(f"{prefix}.{layer}.{family.layout.shared_experts}.{proj}.weight", proj) for proj in PROJECTIONS]


def dense_mlp_name(prefix: str, layer: int, projection: str) -> str:
    return f"{prefix}.{layer}.mlp.{projection}.weight"
