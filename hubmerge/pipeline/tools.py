"""The tool jobs (``extract_lora``, ``tokensurgeon``) behind one entry point, as push, sync, reproduce and
the CLI run them: run a recipe into a folder with its card, or plan it from headers for ``validate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from hubmerge.output.parents import parent_cards
from hubmerge.output.tool_card import ToolCard, pinned_tool_block, tool_card_text
from hubmerge.pipeline.card import merge_lineage
from hubmerge.pipeline.extract_lora import ExtractResult, open_extraction, run_extraction
from hubmerge.pipeline.tokensurgeon import TransplantResult, open_transplant, run_transplant, transplant_stats
from hubmerge.pipeline.tool_run import ToolRun
from hubmerge.spec.tools import ExtractLoraSpec, TokensurgeonSpec, ToolSpec

ToolResult = Union[ExtractResult, TransplantResult]


def run_tool(spec: ToolSpec, out_dir: str | Path, run: ToolRun | None = None, *, hub: Any = None,
             card: bool = True) -> ToolResult:
    run = run or ToolRun()
    title = run.title or Path(out_dir).name

    def write(result, folder: Path) -> str:
        text = card_text(result, title=title, device=run.device, repo_id=run.repo_id, hub=hub,
                         existing=run.existing_card)
        (folder / "README.md").write_text(text, encoding="utf-8")
        return text

    job = run_extraction if isinstance(spec, ExtractLoraSpec) else run_transplant
    return job(spec, out_dir, run, hub=hub, card_writer=write if card else None)


def card_text(result: ToolResult, *, title: str, device: str = "cpu", repo_id: str | None = None, hub: Any = None,
              existing: str | None = None) -> str:
    """The README of a tool's output: the parents' cards read, the lineage walked, the card rendered."""
    card = tool_card(result, device=device)
    parents = parent_cards(card.sources)
    lineage = merge_lineage(repo_id or title, pinned_tool_block(card)["recipe"], parents, hub)
    return tool_card_text(card, title=title, parents=parents, lineage=lineage, existing=existing, repo_id=repo_id,
                          endpoint=getattr(hub, "endpoint", None))


def describe(result: ToolResult) -> str:
    """The commit description of a push of a tool's output."""
    if isinstance(result, ExtractResult):
        head = f"LoRA adapter extracted with hubmerge (max rank {result.report.to_json()['max_rank']})."
    else:
        head = f"Tokenizer transplanted with hubmerge ({result.stats.method})."
    lines = [head, "", "Sources:"]
    lines += [f"- {s.name}" + (f"@{s.revision}" if s.revision else "") for s in result.plan.sources]
    return "\n".join(lines + ["", f"Content hash: {result.content_hash}"])


def _ref_text(source) -> str:
    return f"`{source.name}`" + (f" @ `{source.revision[:12]}`" if source.is_hub and source.revision else "")


def tool_card(result: ToolResult, *, device: str = "cpu") -> ToolCard:
    if isinstance(result, ExtractResult):
        return _extract_card(result, device)
    return _transplant_card(result, device)


def _extract_card(result: ExtractResult, device: str) -> ToolCard:
    plan, report = result.plan, result.report
    stats = report.to_json()
    spec = plan.spec
    how = (f"rank at most {spec.rank}" + (f", singular values above {spec.sv_epsilon}" if spec.sv_epsilon else ""))
    details = [
        f"`delta = W_fine-tune - W_base` of every linear layer, in float32, compressed by truncated SVD ({how}): "
        "`B = U_r sqrt(S_r)`, `A = sqrt(S_r) V_r^T`, stored with `lora_alpha = r` so PEFT adds exactly `B @ A`.",
        "",
        "| | |", "|---|---|",
        f"| LoRA modules | {stats['lora_modules']} (largest rank {stats['max_rank']}) |",
        f"| saved in full (`modules_to_save`) | {stats['saved_in_full']} tensors |",
        f"| unchanged, left out | {stats['unchanged']} tensors |",
        f"| reconstruction error | {stats['relative_error']:.4g} (‖delta − B@A‖_F / ‖delta‖_F over all LoRA "
        "modules, from the discarded singular values) |",
        f"| change from the base | {stats['change_ratio']:.4g} (‖delta‖_F / ‖W_base‖_F) |",
    ]
    if stats["worst_module"]:
        w = stats["worst_module"]
        details.append(f"| least well kept | `{w['module']}`: rank {w['rank']}, error {w['relative_error']:.4g} |")
    if plan.model_vocab != plan.base_vocab and plan.model_vocab and plan.base_vocab:
        details += ["", f"> [!WARNING]\n> The vocabulary changed from the base's {plan.base_vocab} tokens to "
                    f"{plan.model_vocab}: call `model.resize_token_embeddings({plan.model_vocab})` on the base "
                    "before loading the adapter."]
    base_rev = f', revision="{plan.base.revision}"' if plan.base.is_hub and plan.base.revision else ""
    usage = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
             f'base = AutoModelForCausalLM.from_pretrained("{plan.base.name}"{base_rev}, torch_dtype="auto")',
             'model = PeftModel.from_pretrained(base, "{repo}")',
             "merged = model.merge_and_unload()  # or keep it as an adapter"]
    summary = (f"A LoRA adapter for {_ref_text(plan.base)}, extracted from the fine-tune {_ref_text(plan.model)}: "
               "loading it on the base gives the fine-tune back, up to the error below.")
    roles = {plan.base.name: "base", plan.model.name: "fine-tune (extracted from)"}
    return ToolCard("extract_lora", spec.raw, [plan.base, plan.model], roles, plan.base.name, summary, details,
                    "Extraction", stats, usage, library="peft", digest=result.content_hash,
                    dtype=result.dtype, device=device, notes=list(report.notes))


METHOD_TEXT = {
    "omp": "orthogonal matching pursuit: each new token's donor embedding written as a combination of {k} "
           "shared tokens' donor embeddings, the same combination of their rows in this model "
           "([Goddard & Neto 2025](https://arxiv.org/abs/2506.06607))",
    "subword": "the {sub} of the rows of the pieces this model's own tokenizer splits the token into "
               "([Gee et al. 2022](https://aclanthology.org/2022.emnlp-industry.41))",
    "mean": "the mean of all this model's rows",
    "zero": "zeros",
}


def _transplant_card(result: TransplantResult, device: str) -> ToolCard:
    plan, st = result.plan, result.stats
    spec = plan.spec
    how = METHOD_TEXT[st.method].format(k=plan.k or spec.k, sub=spec.subword_method.replace("_", " "))
    details = ["| tokens | rows |", "|---|---|",
               f"| copied from the model (shared tokens) | {st.copied} |",
               f"| approximated: {how} | {st.approximated} |",
               f"| zeros (no donor embedding row) | {st.zero} |",
               f"| total (the donor's vocabulary) | {st.rows} |"]
    if st.examples:
        details += ["", "Approximated, for example: " + ", ".join(f"`{t}`" for t in st.examples) + "."]
    usage = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             'tokenizer = AutoTokenizer.from_pretrained("{repo}")  # the donor\'s tokenizer',
             'model = AutoModelForCausalLM.from_pretrained("{repo}", torch_dtype="auto")']
    summary = (f"{_ref_text(plan.model)} with the tokenizer of {_ref_text(plan.donor)}: every embedding and "
               "output-head row re-indexed to the donor's vocabulary, rows for tokens the model lacked approximated.")
    roles = {plan.model.name: "model (weights)", plan.donor.name: "donor (tokenizer)"}
    stats = st.to_json() | {"k": plan.k} if st.method == "omp" else st.to_json()
    dtype = plan.model.tensors[plan.order[0]].dtype if plan.order else None
    return ToolCard("tokensurgeon", spec.raw, [plan.model, plan.donor], roles, plan.model.name, summary, details,
                    "Tokens", stats, usage, digest=result.content_hash, dtype=dtype, device=device,
                    notes=list(plan.notes))


def plan_summary(spec: ToolSpec, *, base_dir: Path | None = None, hub: Any = None,
                 allow_pickle: bool = False) -> dict[str, Any]:
    """``hubmerge validate`` of a tool recipe: planned from tokenizers and headers, nothing read."""
    if isinstance(spec, ExtractLoraSpec):
        plan = open_extraction(spec, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
        try:
            kinds: dict[str, int] = {}
            for t in plan.targets:
                kinds[t.kind] = kinds.get(t.kind, 0) + 1
            return {"tool": spec.tool, "models": _models(plan.sources), "lora_candidates": kinds.get("lora", 0),
                    "full_candidates": kinds.get("full", 0), "max_rank": spec.rank,
                    "reads_bytes": sum(t.nbytes for t in plan.targets), "notes": plan.notes}
        finally:
            plan.close()
    assert isinstance(spec, TokensurgeonSpec)
    tplan = open_transplant(spec, base_dir=base_dir, hub=hub, allow_pickle=allow_pickle)
    try:
        return {"tool": spec.tool, "models": _models(tplan.sources), **transplant_stats(tplan).to_json(),
                "vocab_tensors": sorted(tplan.vocab_tensors), "notes": tplan.notes}
    finally:
        tplan.close()


def _models(sources) -> list[dict[str, Any]]:
    return [{"name": s.name, "revision": s.revision} for s in sources]
