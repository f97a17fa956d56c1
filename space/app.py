"""hubmerge as a Hugging Face Space: build a merge recipe (or a mixture of experts), validate it against the
parents' headers, merge and push it to your namespace as one commit, and re-merge when a parent moves.

Run locally:  ``HF_ENDPOINT=... HUBMERGE_LOCAL_OAUTH_TOKEN=hf_... python space/app.py`` (see README.md).
Import: ``from app import demo`` (a ``gr.Blocks``); ``launch()`` adds the theme and CSS.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import app_moe  # noqa: E402
import gradio as gr  # noqa: E402
import space_form as sf  # noqa: E402
import space_hub as sh  # noqa: E402
import space_oauth  # noqa: E402

from hubmerge.errors import HubmergeError  # noqa: E402
from hubmerge.sources.hub_model import default_endpoint  # noqa: E402
from hubmerge.spec.frontmatter import split_front_matter  # noqa: E402

logger = logging.getLogger("hubmerge.space")

space_oauth.install()  # off Spaces: "Sign in" acts as HUBMERGE_LOCAL_OAUTH_TOKEN or the local HF login

CSS = """
#recipe .cm-content { font-size: 13px; }
#lineage img { background: #fff; border-radius: 8px; }
.hm-params { border-left: 3px solid var(--color-accent); padding-left: 6px; }
"""
THEME = gr.themes.Soft(primary_hue="amber", secondary_hue="violet")

PARAM_FIELDS = sf.param_fields()
CHECK_HEADERS = ["source", "tracks", "recorded", "current", "changed"]


def _token(oauth: gr.OAuthToken | None) -> str | None:
    return oauth.token if oauth is not None and oauth.token else None


def _fail(exc: BaseException, token: str | None) -> gr.Error:
    """A message the user can act on, never the token; unexpected errors are logged by type only."""
    if isinstance(exc, HubmergeError):
        return gr.Error(sh.redact(sh.space_text(exc), token), print_exception=False)
    logger.error("unexpected %s: %s", type(exc).__name__, sh.redact(str(exc), token))
    return gr.Error(f"unexpected error ({type(exc).__name__}): {sh.redact(str(exc), token)}", print_exception=False)


# ---------------------------------------------------------------------------------------------------
# form <-> YAML

def _form_from_inputs(method: str, base: str, models: str, dtype: str, values: tuple) -> sf.Form:
    form = sf.Form(method=method, base_model=base or "", models=models or "", dtype=dtype)
    for (name, p), value in zip(PARAM_FIELDS, values):
        form.values[sf.field_key(name, p.name)] = value
    return form


def _status(error: str | None, notes: list[str] | None = None) -> str:
    lines = [f"❌ `{error}`" if error else "✅ valid recipe (not yet checked against the models: Validate)"]
    lines += [f"ℹ️ {n}" for n in notes or []]
    return "\n\n".join(lines)


def form_to_yaml(method, base, models, dtype, recipe, *values):
    """Form edited: rewrite the keys the form owns, keep the rest of the YAML."""
    try:
        form = _form_from_inputs(method, base, models, dtype, values)
        if sf.says_the_same(form, recipe):  # e.g. a field left without a change: keep the YAML's comments
            return gr.update(), _status(sf.check_yaml(recipe))
        text = sf.form_to_yaml(form, recipe)
    except sf.FormError as exc:
        return gr.update(), _status(str(exc))
    return text, _status(sf.check_yaml(text))


def yaml_to_form(recipe):
    """YAML edited: fill the form from it (fields it cannot show stay in the YAML) and report problems."""
    loaded = sf.yaml_to_form(recipe)
    keep = [gr.update()] * (6 + len(PARAM_FIELDS))
    if loaded.form is None:
        return (*keep, _status(loaded.error))
    f = loaded.form
    params = [f.values[sf.field_key(name, p.name)] if name == f.method else gr.update() for name, p in PARAM_FIELDS]
    repo = f.repo_name if f.repo_name else gr.update()
    return (f.method, f.base_model, f.models, f.dtype, repo, f.private, *params, _status(loaded.error, loaded.notes))


def require_in_sync(method, base, models, dtype, recipe, *values) -> None:
    """Runs before Validate and Merge: they read the YAML, so it must say what the form shows."""
    try:
        form = _form_from_inputs(method, base, models, dtype, values)
    except Exception:  # noqa: BLE001 - a form the app cannot read: the YAML alone decides
        return
    problem = sf.out_of_sync(form, recipe)
    if problem:
        raise gr.Error(f"{problem}: the YAML has not caught up with your last edit yet. Check the YAML recipe "
                       "beside the form (click outside the field you changed to update it), then press the button "
                       "again.", print_exception=False)


def show_method(method):
    return (sf.method_info(method), *[gr.update(visible=(name == method)) for name in sf.method_names()])


# ---------------------------------------------------------------------------------------------------
# validate, merge, check

def who(profile: gr.OAuthProfile | None) -> str:
    if profile is None:
        return "Not signed in: **Validate** works anonymously; sign in to merge into your namespace."
    return f"Signed in as **{profile.username}**: merges go to `{profile.username}/<repo name>`."


def validate(recipe: str, repo_name: str, oauth_token: gr.OAuthToken | None) -> str:
    token = _token(oauth_token)
    try:
        return sh.validate(recipe, token=token, repo_name=repo_name).markdown
    except BaseException as exc:  # noqa: BLE001
        raise _fail(exc, token) from None


def _result_views(pushed: sh.Pushed, token: str | None, *, verb: str) -> tuple[str, str, str]:
    if pushed.changed:
        head = (f"✅ {verb} **[{pushed.repo_id}]({pushed.repo_url})** in {pushed.seconds:.1f} s — "
                f"[commit]({pushed.commit_url}) · content hash `{pushed.content_hash}`")
    else:
        head = (f"✅ **[{pushed.repo_id}]({pushed.repo_url})** already holds these exact weights "
                f"(`{pushed.content_hash}`): no commit made")
    _, body = split_front_matter(pushed.readme) if pushed.readme else ({}, "")
    card = ("### Model card\n\n" + body.strip()) if body.strip() else "_no card_"
    try:
        lineage = sh.lineage_picture(pushed, token)
    except Exception as exc:  # noqa: BLE001 - the picture is decoration; the push already landed
        logger.warning("lineage graph: %s", type(exc).__name__)
        lineage = ""
    return head, lineage, card


def merge(recipe: str, repo_name: str, private: bool, oauth_token: gr.OAuthToken | None,
          progress=gr.Progress(track_tqdm=True)):
    token = _token(oauth_token)
    if token is None:
        raise gr.Error("Sign in with Hugging Face first: the merge is pushed to your namespace, as you.")
    progress(0, desc="Checking the recipe and the parents' headers")
    try:
        pushed = sh.merge_and_push(recipe, token=token, repo_name=repo_name, private=bool(private))
    except BaseException as exc:  # noqa: BLE001
        raise _fail(exc, token) from None
    head, lineage, card = _result_views(pushed, token, verb="Pushed")
    return head, lineage, card, pushed.repo_id


def _check_rows(report) -> list[list[str]]:
    return [[s.source, s.tracks or "(pinned)", s.recorded[:12], s.current[:12], "yes" if s.changed else "no"]
            for s in report.sources]


def _check_head(report) -> str:
    if report.stale:
        moved = ", ".join(f"`{s.source}`" for s in report.sources if s.changed)
        return (f"⚠️ **{report.target}** is **stale**: {moved} moved since the merge "
                f"(checked at `{report.revision[:12]}`). Re-merge to bring it up to date.")
    return f"✅ **{report.target}** is **up to date** with its parents (checked at `{report.revision[:12]}`)."


def check(target: str, oauth_token: gr.OAuthToken | None):
    token = _token(oauth_token)
    try:
        report = sh.check_target(target, token=token)
    except BaseException as exc:  # noqa: BLE001
        raise _fail(exc, token) from None
    return _check_head(report), _check_rows(report), gr.update(interactive=report.stale)


def remerge(target: str, oauth_token: gr.OAuthToken | None, progress=gr.Progress(track_tqdm=True)):
    token = _token(oauth_token)
    if token is None:
        raise gr.Error("Sign in with Hugging Face first: the re-merge is pushed as you.")
    progress(0, desc="Checking the parents")
    try:
        report, pushed = sh.remerge(target, token=token)
    except BaseException as exc:  # noqa: BLE001
        raise _fail(exc, token) from None
    if pushed is None:
        return (_check_head(report), _check_rows(report), "Nothing moved: no re-merge needed.", "", "",
                gr.update(interactive=False))
    changes = "; ".join(f"`{s.source}` {s.recorded[:12]} → {s.current[:12]}" for s in report.sources if s.changed)
    head, lineage, card = _result_views(pushed, token, verb="Re-merged")
    return (f"✅ **{report.target}** re-merged: {changes}", _check_rows(report), head, lineage, card,
            gr.update(interactive=False))


# ---------------------------------------------------------------------------------------------------
# the page

def build() -> gr.Blocks:
    initial = sf.initial_form()
    with gr.Blocks(title="hubmerge") as demo:
        with gr.Row(equal_height=True):
            gr.Markdown("# 🔀 hubmerge\nMerge language models from a mergekit-compatible recipe, streamed from the "
                        "Hub tensor by tensor, and push the result to your namespace as **one commit**.")
            with gr.Column(scale=0, min_width=260):
                gr.LoginButton(elem_id="login")
                user_md = gr.Markdown(elem_id="who")
        with gr.Tabs():
            with gr.Tab("Merge", id="merge-tab"):
                with gr.Row():
                    with gr.Column(scale=5):
                        models = gr.Textbox(label="Parent models", lines=3, elem_id="models",
                                            placeholder="org/model or org/model@revision, one per line")
                        base = gr.Textbox(label="Base model", elem_id="base", placeholder="org/base-model")
                        method = gr.Dropdown(sf.method_names(), value=initial.method, label="Merge method",
                                             elem_id="method")
                        method_md = gr.Markdown(sf.method_info(initial.method), elem_id="method-info")
                        groups, params = [], []
                        for name, m in sf.methods().items():
                            with gr.Group(visible=(name == initial.method), elem_classes=["hm-params"]) as group:
                                for p in m.params:
                                    key, elem = sf.field_key(name, p.name), f"p-{name}-{p.name}"
                                    if sf.is_checkbox(p):
                                        comp = gr.Checkbox(value=initial.values[key], label=p.name,
                                                           info=sf.field_help(p), elem_id=elem)
                                    else:
                                        comp = gr.Textbox(value=initial.values[key], label=p.name,
                                                          info=sf.field_help(p), placeholder=sf.placeholder(p),
                                                          elem_id=elem)
                                    params.append(comp)
                            groups.append(group)
                        dtype = gr.Dropdown(list(sf.DTYPE_CHOICES), value=initial.dtype, label="dtype",
                                            elem_id="dtype")
                        with gr.Row():
                            repo_name = gr.Textbox(label="Target repo name", elem_id="repo-name", scale=3,
                                                   placeholder="my-merge (goes to your namespace)")
                            private = gr.Checkbox(label="Private", elem_id="private", scale=1)
                    with gr.Column(scale=5):
                        recipe = gr.Code(sf.initial_yaml(), language="yaml", label="YAML recipe (editable)",
                                         interactive=True, elem_id="recipe", lines=18)
                        recipe_status = gr.Markdown(_status(None), elem_id="recipe-status")
                with gr.Row():
                    validate_btn = gr.Button("Validate", elem_id="validate-btn")
                    merge_btn = gr.Button("Merge & push", variant="primary", elem_id="merge-btn")
                validation = gr.Markdown(elem_id="validation")
                result = gr.Markdown(elem_id="result")
                with gr.Row():
                    lineage = gr.HTML(elem_id="lineage")
                    card = gr.Markdown(elem_id="card")
            with gr.Tab("Mixture of experts", id="moe-tab"):
                app_moe.build_tab(validate, merge)
            with gr.Tab("Check & re-merge", id="check-tab"):
                gr.Markdown("Is a merge made by hubmerge still built from its parents' latest commits? Parents "
                            "named without a pinned revision track their branch; **Re-merge** pushes one commit "
                            "from the new heads (only if something moved).")
                with gr.Row():
                    check_target = gr.Textbox(label="Merged repo (owner/name)", elem_id="check-target", scale=4)
                    check_btn = gr.Button("Check", elem_id="check-btn", scale=1)
                    remerge_btn = gr.Button("Re-merge & push", variant="primary", interactive=False,
                                            elem_id="remerge-btn", scale=1)
                check_md = gr.Markdown(elem_id="check-result")
                check_table = gr.Dataframe(headers=CHECK_HEADERS, interactive=False, elem_id="check-table")
                remerge_result = gr.Markdown(elem_id="remerge-result")
                with gr.Row():
                    remerge_lineage = gr.HTML(elem_id="remerge-lineage")
                    remerge_card = gr.Markdown(elem_id="remerge-card")

        form_inputs = [method, base, models, dtype, recipe, *params]
        # Gradio 6 fires a Textbox's `input` on key presses only: `blur` also catches a value pasted with the
        # mouse or filled in by the browser (programmatic updates fire neither, so YAML -> form cannot loop).
        texts = [c for c in (base, models, *params) if isinstance(c, gr.Textbox)]
        gr.on([c.input for c in (method, base, models, dtype, *params)] + [c.blur for c in texts], form_to_yaml,
              form_inputs,
              [recipe, recipe_status], api_name="form_to_yaml", show_progress="hidden", trigger_mode="always_last",
              concurrency_limit=8)
        recipe.input(yaml_to_form, [recipe], [method, base, models, dtype, repo_name, private, *params, recipe_status],
                     api_name="yaml_to_form", show_progress="hidden", trigger_mode="always_last", concurrency_limit=8)
        method.change(show_method, [method], [method_md, *groups], api_visibility="private", show_progress="hidden",
                      concurrency_limit=8)
        demo.load(who, None, user_md, api_visibility="private")
        # Validate and Merge read the YAML; a private first step refuses when it does not say what the form shows.
        sync = dict(fn=require_in_sync, inputs=form_inputs, outputs=None, api_visibility="private",
                    show_progress="hidden", concurrency_limit=8)
        validate_btn.click(**sync).success(validate, [recipe, repo_name], validation, api_name="validate",
                                           concurrency_limit=4)
        merge_btn.click(**sync).success(merge, [recipe, repo_name, private], [result, lineage, card, check_target],
                                        api_name="merge", concurrency_limit=1, concurrency_id="hub-write",
                                        show_progress_on=[result])
        check_btn.click(check, [check_target], [check_md, check_table, remerge_btn], api_name="check",
                        concurrency_limit=4)
        remerge_btn.click(remerge, [check_target],
                          [check_md, check_table, remerge_result, remerge_lineage, remerge_card, remerge_btn],
                          api_name="remerge", concurrency_limit=1, concurrency_id="hub-write",
                          show_progress_on=[remerge_result])
    demo.queue(max_size=32)
    return demo


demo = build()


def launch(**kwargs: Any):
    """``demo.launch`` with the page's theme and CSS (Gradio 6 takes them at launch)."""
    kwargs.setdefault("css", CSS)
    kwargs.setdefault("theme", THEME)
    return demo.launch(**kwargs)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("Hub endpoint: %s", default_endpoint())
    launch()
