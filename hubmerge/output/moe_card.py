"""The card sections of a mixture of experts: what it is built from, each expert with its prompts, and how
its router was initialised. The rest of the card (license, lineage, recipe, reproduce, usage) is a merge's."""

from __future__ import annotations

from typing import Any, Callable

GATE_TEXT = {
    "hidden": "each layer's router row for an expert is the base model's hidden state entering that layer at the "
              "last token of the expert's prompts (averaged over them, minus its negative prompts'), normalised",
    "hidden_last": "each layer's router row for an expert is the base model's hidden state entering that layer at "
                   "the last token of the expert's prompts (averaged over them, minus its negative prompts'), "
                   "normalised",
    "hidden_avg": "each layer's router row for an expert is the base model's hidden state entering that layer, "
                  "averaged over the positions and prompts (minus its negative prompts'), normalised",
    "cheap_embed": "every layer's router row for an expert is the sum of its prompts' token embeddings (minus its "
                   "negative prompts'), normalised",
    "random": "router rows drawn from a standard normal distribution (seeded per tensor by hubmerge.seed)",
    "uniform_random": "router rows drawn uniformly from ±1/sqrt(hidden size), torch.nn.Linear's initialisation "
                      "(seeded per tensor by hubmerge.seed)",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _prompts(prompts: tuple[str, ...], limit: int = 4) -> str:
    if not prompts:
        return "—"
    shown = "; ".join(f"“{_cell(p[:80])}{'…' if len(p) > 80 else ''}”" for p in prompts[:limit])
    return shown + (f" (+{len(prompts) - limit} more)" if len(prompts) > limit else "")


def moe_sections(plan: Any, by_name: dict[str, Any], endpoint: str, *, link: Callable[[str, str | None, str], str],
                 project_url: str) -> list[str]:
    """Summary, the MoE's shape and router, and the experts table (with prompts) of an MoE's card.
    ``by_name``: each parent's card (its ``license``); ``link(name, revision, endpoint)``: a parent as a link."""
    spec, family = plan.spec, plan.family
    base = plan.models[plan.base]
    n = len(spec.experts)
    shared = len(spec.shared_experts)
    lines = [f"A **mixture of {n} experts**" + (f" plus {shared} shared expert" if shared else "")
             + f" built on `{base.name}`, made with [hubmerge]({project_url}) from a mergekit-moe recipe. "
             f"Attention, norms and embeddings are the base's; each layer's MLP is one expert per source model.",
             "", "## Mixture of experts", "",
             f"- Output family: **{family.display}** (`{family.architecture}`), {plan.num_layers} layers, "
             f"{spec.experts_per_token} of {n} experts per token" + (", plus the shared expert" if shared else ""),
             f"- Router (`gate_mode: {spec.gate_mode}`): {GATE_TEXT[spec.gate_mode]}."]
    if spec.dtype:
        lines.append(f"- Weights written as `{spec.dtype}`.")
    if not family.native:
        lines.append("- transformers has no class for this family: load it with the model's own code "
                     "(`trust_remote_code=True`, from `deepseek-ai/deepseek-moe-16b-base`); read that code first.")
    lines += ["", "## Experts", "", "| # | model | revision | license | positive prompts | negative prompts | "
              "noise / residual scale |", "|---|---|---|---|---|---|---|"]
    rows = [(str(i), e) for i, e in enumerate(spec.experts)] + [("shared", e) for e in spec.shared_experts]
    refs = {(e.source_model.path): m for e, m in zip(spec.all_experts, plan.experts + plan.shared)}
    for label, e in rows:
        model = plan.models[refs[e.source_model.path]]
        parent = by_name.get(model.name)
        revision = model.revision if model.is_hub else None
        scales = ", ".join(f"{k} {v:g}" for k, v in (("noise", e.noise_scale), ("residual", e.residual_scale))
                           if v is not None) or "—"
        cells = [label, link(model.name, revision, endpoint), f"`{revision[:12]}`" if revision else "local",
                 (parent.license if parent is not None else None) or "unknown", _prompts(e.positive_prompts),
                 _prompts(e.negative_prompts), scales]
        lines.append("| " + " | ".join(c if i in (1,) else _cell(c) for i, c in enumerate(cells)) + " |")
    lines += ["", f"Base: {link(base.name, base.revision if base.is_hub else None, endpoint)} "
              "(attention, norms, embeddings, tokenizer)."]
    return lines
