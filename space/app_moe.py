"""The Space's "Mixture of experts" tab: base model, gate mode and expert slots with prompt boxes -> a
mergekit-moe recipe in YAML, validated against the headers and merged & pushed like any recipe."""

from __future__ import annotations

import gradio as gr
import space_moe as sm


def build_tab(validate, merge) -> None:
    """Inside a ``gr.Tab``: the components and their events. ``validate(recipe, repo_name, oauth)`` and
    ``merge(recipe, repo_name, private, oauth, progress)`` are the app's own handlers."""
    gr.Markdown("Build a **mixture of experts** from dense fine-tunes of one base (mergekit-moe's recipe): "
                "attention and embeddings come from the base, each layer's MLP from every expert, and a router "
                "initialised from each expert's prompts sends each token to the experts it fits.")
    with gr.Row():
        with gr.Column(scale=5):
            base = gr.Textbox(label="Base model", elem_id="moe-base", placeholder="org/base-model")
            with gr.Row():
                gate = gr.Dropdown(list(sm.GATE_HELP), value="hidden", label="Gate mode", elem_id="moe-gate",
                                   info="; ".join(f"{k}: {v}" for k, v in sm.GATE_HELP.items()))
                per_token = gr.Number(value=2, precision=0, minimum=1, label="Experts per token",
                                      elem_id="moe-per-token")
            with gr.Row():
                family = gr.Dropdown(list(sm.FAMILY_CHOICES), value=sm.AUTO, label="Output family",
                                     elem_id="moe-family")
                dtype = gr.Dropdown(list(sm.DTYPE_CHOICES), value="bfloat16", label="dtype", elem_id="moe-dtype")
            slots = []
            for i in range(sm.MAX_EXPERTS):
                with gr.Accordion(f"Expert {i}", open=i < 2, elem_id=f"moe-expert-{i}"):
                    slots += [gr.Textbox(label="Model", elem_id=f"moe-model-{i}", placeholder="org/fine-tune"),
                              gr.Textbox(label="Positive prompts (one per line)", lines=3, elem_id=f"moe-pos-{i}"),
                              gr.Textbox(label="Negative prompts (one per line)", lines=2, elem_id=f"moe-neg-{i}")]
            with gr.Accordion("Shared expert (Qwen-MoE, DeepSeek-MoE)", open=False, elem_id="moe-shared"):
                slots += [gr.Textbox(label="Model", elem_id="moe-model-shared"),
                          gr.Textbox(label="Positive prompts (Qwen-MoE gates its shared expert)", lines=2,
                                     elem_id="moe-pos-shared"),
                          gr.Textbox(label="Negative prompts", lines=2, elem_id="moe-neg-shared")]
            with gr.Row():
                repo_name = gr.Textbox(label="Target repo name", elem_id="moe-repo-name", scale=3,
                                       placeholder="my-moe (goes to your namespace)")
                private = gr.Checkbox(label="Private", elem_id="moe-private", scale=1)
        with gr.Column(scale=5):
            recipe = gr.Code(language="yaml", label="MoE recipe (YAML; editable, this is what is merged)",
                             interactive=True, elem_id="moe-recipe", lines=22)
            status = gr.Markdown(elem_id="moe-status")
    with gr.Row():
        validate_btn = gr.Button("Validate", elem_id="moe-validate-btn")
        merge_btn = gr.Button("Build MoE & push", variant="primary", elem_id="moe-merge-btn")
    validation = gr.Markdown(elem_id="moe-validation")
    result = gr.Markdown(elem_id="moe-result")
    with gr.Row():
        lineage = gr.HTML(elem_id="moe-lineage")
        card = gr.Markdown(elem_id="moe-card")

    inputs = [base, gate, per_token, family, dtype, *slots]
    texts = [c for c in inputs if isinstance(c, gr.Textbox)]
    gr.on([c.input for c in inputs] + [c.blur for c in texts], sm.form_to_yaml, inputs, [recipe, status],
          api_name="moe_to_yaml", show_progress="hidden", trigger_mode="always_last", concurrency_limit=8)
    recipe.input(sm.status_of, [recipe], [status], api_name="moe_status", show_progress="hidden",
                 trigger_mode="always_last", concurrency_limit=8)
    validate_btn.click(validate, [recipe, repo_name], validation, api_name="moe_validate", concurrency_limit=4)
    pushed_repo = gr.State()
    merge_btn.click(merge, [recipe, repo_name, private], [result, lineage, card, pushed_repo], api_name="moe_merge",
                    concurrency_limit=1, concurrency_id="hub-write", show_progress_on=[result])
