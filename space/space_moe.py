"""The Space's mixture-of-experts form -> YAML recipe (mergekit-moe's), without Gradio.

A fixed number of expert slots (model, positive prompts, negative prompts; prompts one per line) plus one
shared-expert slot; empty slots are left out. The YAML it writes is what Validate and Merge read, and the
user may edit it further (noise_scale, residual_scale, tokenizer settings, ``hubmerge:`` options).
"""

from __future__ import annotations

from typing import Any

from hubmerge.errors import HubmergeError
from hubmerge.spec import parse_spec
from hubmerge.spec.moe import FAMILIES
from hubmerge.spec.yamlio import dump_yaml

MAX_EXPERTS = 8
FIELDS_PER_EXPERT = 3  # model, positive prompts, negative prompts
AUTO = "(auto: as mergekit-moe picks)"
FAMILY_CHOICES = (AUTO, *FAMILIES)
DTYPE_CHOICES = ("bfloat16", "float16", "float32", "(as the base)")
GATE_HELP = {
    "hidden": "router rows from the base model's hidden states on each expert's prompts (best, slower)",
    "cheap_embed": "router rows from the prompts' token embeddings (fast, no forward pass)",
    "random": "random router rows: for training the MoE afterwards (prompts not needed)",
    "uniform_random": "random router rows as torch.nn.Linear initialises them (prompts not needed)",
}


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _expert(model: str, positive: str, negative: str) -> dict[str, Any] | None:
    model = (model or "").strip()
    if not model:
        return None
    doc: dict[str, Any] = {"source_model": model}
    if _lines(positive):
        doc["positive_prompts"] = _lines(positive)
    if _lines(negative):
        doc["negative_prompts"] = _lines(negative)
    return doc


def moe_document(base: str, gate_mode: str, per_token: Any, family: str, dtype: str,
                 experts: list[tuple[str, str, str]], shared: tuple[str, str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"base_model": (base or "").strip(), "gate_mode": gate_mode}
    if family and family != AUTO:
        doc["architecture"] = family
    if dtype in DTYPE_CHOICES[:3]:
        doc["dtype"] = dtype
    doc["experts_per_token"] = int(per_token or 2)
    doc["experts"] = [e for e in (_expert(*slot) for slot in experts) if e is not None]
    shared_doc = _expert(*shared) if shared else None
    if shared_doc is not None:
        doc["shared_experts"] = [shared_doc]
    return doc


def form_to_yaml(base: str, gate_mode: str, per_token: Any, family: str, dtype: str, *slots: str) -> tuple[str, str]:
    """(YAML, status line) from the form; ``slots``: MAX_EXPERTS experts then the shared expert, three fields
    each. The status names the first problem with its YAML path, or says the recipe is valid."""
    groups = [tuple(slots[i:i + FIELDS_PER_EXPERT]) for i in range(0, len(slots), FIELDS_PER_EXPERT)]
    doc = moe_document(base, gate_mode, per_token, family, dtype, groups[:MAX_EXPERTS],
                       groups[MAX_EXPERTS] if len(groups) > MAX_EXPERTS else None)
    text = dump_yaml(doc)
    return text, status_of(text)


def status_of(text: str) -> str:
    try:
        parse_spec(text, source="recipe")
    except HubmergeError as exc:
        return f"❌ `{exc}`"
    return "✅ valid MoE recipe (not yet checked against the models: Validate)"
