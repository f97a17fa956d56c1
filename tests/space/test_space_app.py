"""The Space driven with gradio_client against the loopback Hub: form <-> YAML, validate, merge & push as
the signed-in user, nothing left behind on failure, check and re-merge."""

from __future__ import annotations

import base64
import json
import logging
import re
import time

import pytest
import torch
import yaml

pytest.importorskip("gradio_client", reason="the Space tests need the test extra (gradio, gradio_client)")

from gradio_client.exceptions import AppError  # noqa: E402
from huggingface_hub import HfApi, SpaceCard  # noqa: E402
from safetensors.torch import load as load_safetensors  # noqa: E402
from safetensors.torch import save as save_safetensors
from space_support import ALICE, ALICE_TOKEN, SPACE_DIR, recipe  # noqa: E402

ROOT = SPACE_DIR.parent


def _alice_api(hub) -> HfApi:
    return HfApi(endpoint=hub.url, token=ALICE_TOKEN)


def _name(repo_id_factory) -> str:
    return repo_id_factory(namespace=ALICE).split("/", 1)[1]


def _form_args(app, sf, **overrides):
    """Positional inputs of /form_to_yaml: method, base, models, dtype, recipe, then every parameter field."""
    form = sf.initial_form()
    values = dict(form.values)
    values.update(overrides.pop("values", {}))
    args = dict(method=form.method, base="", models="", dtype=form.dtype, recipe="")
    args.update(overrides)
    return [args["method"], args["base"], args["models"], args["dtype"], args["recipe"],
            *[values[sf.field_key(name, p.name)] for name, p in app.PARAM_FIELDS]]


# ---------------------------------------------------------------------------------------------------
# the Space's files

def test_space_metadata_pins_the_tested_gradio_and_enables_oauth():
    import gradio

    card = SpaceCard.load(SPACE_DIR / "README.md")
    data = card.data
    assert data.sdk == "gradio" and data.app_file == "app.py"
    assert data.sdk_version == gradio.__version__, "sdk_version must be the gradio the tests ran"
    assert data.hf_oauth is True
    assert {"read-repos", "write-repos", "manage-repos"} <= set(data.hf_oauth_scopes)
    requirements = (SPACE_DIR / "requirements.txt").read_text()
    assert re.search(r"^hubmerge\[space\]", requirements, re.M), requirements
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"gradio[oauth]=={gradio.__version__}"' in pyproject


# ---------------------------------------------------------------------------------------------------
# form <-> YAML

def test_form_edits_rewrite_the_yaml_and_keep_what_the_form_cannot_show(space, anonymous_client):
    app, _ = space
    import space_form as sf

    text, status = anonymous_client.predict(
        *_form_args(app, sf, method="dare_ties", base="up/base", models="up/chat\nup/math@v2",
                    values={"dare_ties.weight": "0.6; [0.2, 0.8]", "dare_ties.density": "0.5",
                            "dare_ties.lambda": "0.9"}),
        api_name="/form_to_yaml")
    doc = yaml.safe_load(text)
    assert doc == {"merge_method": "dare_ties", "base_model": "up/base",
                   "models": [{"model": "up/chat", "parameters": {"weight": 0.6, "density": 0.5}},
                              {"model": "up/math@v2", "parameters": {"weight": [0.2, 0.8], "density": 0.5}}],
                   "parameters": {"lambda": 0.9}, "dtype": "bfloat16"}
    assert "valid recipe" in status

    # Keys the form does not own (tokenizer, hubmerge options) survive a form edit.
    edited = text.rstrip() + "\ntokenizer_source: base\nhubmerge:\n  seed: 7\n"
    text2, _ = anonymous_client.predict(
        *_form_args(app, sf, method="dare_ties", base="up/base", models="up/chat\nup/math@v2", recipe=edited,
                    dtype="float16", values={"dare_ties.weight": "0.5", "dare_ties.density": "0.5"}),
        api_name="/form_to_yaml")
    doc2 = yaml.safe_load(text2)
    assert doc2["tokenizer_source"] == "base" and doc2["hubmerge"] == {"seed": 7} and doc2["dtype"] == "float16"

    # A per-model field with the wrong number of values is reported, and the YAML is left as it was.
    _, status = anonymous_client.predict(
        *_form_args(app, sf, models="up/a\nup/b", values={"ties.weight": "0.1; 0.2; 0.3"}), api_name="/form_to_yaml")
    assert "weight: 3 values separated by ';' for 2 models" in status


def test_yaml_edits_fill_the_form_and_errors_name_the_yaml_path(space, anonymous_client):
    app, _ = space
    import space_form as sf

    out = anonymous_client.predict(
        "merge_method: slerp\nbase_model: up/base@main\nmodels:\n  - model: up/chat\n"
        "parameters: {t: [0, 0.5, 1]}\ndtype: float32\nhubmerge: {target: alice/from-yaml, private: true}\n",
        api_name="/yaml_to_form")
    method, base, models, dtype, repo, private, *params, status = out
    assert (method, base, models, dtype, repo, private) == ("slerp", "up/base@main", "up/chat", "float32",
                                                            "alice/from-yaml", True)
    fields = {sf.field_key(name, p.name): i for i, (name, p) in enumerate(app.PARAM_FIELDS)}
    assert params[fields["slerp.t"]] == "[0, 0.5, 1]"
    assert "valid recipe" in status

    *_, status = anonymous_client.predict(
        "merge_method: ties\nbase_model: up/base\nmodels:\n  - model: up/chat\n    parameters: {weight: 1, densty: 0.5}\n",
        api_name="/yaml_to_form")
    assert "models[0].parameters.densty" in status and "did you mean 'density'" in status

    *_, status = anonymous_client.predict("merge_method: [unclosed", api_name="/yaml_to_form")
    assert "❌" in status


def test_a_form_event_that_changes_nothing_keeps_the_yaml_as_typed(space, anonymous_client):
    """Leaving a form field (blur) runs the form -> YAML step; when the form says what the YAML says, the
    YAML, comments and layout included, is left alone."""
    app, _ = space
    import space_form as sf

    text = ("# my merge\nmerge_method: ties\nbase_model: up/base  # the base\nmodels:\n  - model: up/chat\n"
            "    parameters: {weight: 0.5}\ndtype: bfloat16\n")
    same, status = anonymous_client.predict(*_form_args(app, sf, base="up/base", models="up/chat", recipe=text),
                                            api_name="/form_to_yaml")
    assert same == {"__type__": "update"} and "valid recipe" in status  # no new value sent: unchanged
    changed, _ = anonymous_client.predict(*_form_args(app, sf, base="up/base2", models="up/chat", recipe=text),
                                          api_name="/form_to_yaml")
    assert yaml.safe_load(changed)["base_model"] == "up/base2"


def test_form_and_yaml_differ_only_when_they_say_different_things(space):
    """The check run before Validate/Merge (the YAML is what gets merged; it must say what the form shows)."""
    import space_form as sf

    text = ("merge_method: ties\nbase_model: {path: up/base, revision: v1}\nmodels:\n"
            "  - model: up/chat\n    parameters: {weight: 0.50, density: 0.5}\n"
            "  - model: up/math\n    parameters: {weight: 0.5, density: 0.7}\n"
            "dtype: bfloat16\ntokenizer_source: base\n")
    form = sf.yaml_to_form(text).form
    assert form.base_model == "up/base@v1"
    assert sf.out_of_sync(form, text) is None  # written differently (a mapping, 0.50), same meaning

    pasted = sf.Form(**{**form.__dict__, "models": "up/chat\nup/code"})
    assert "parent models" in sf.out_of_sync(pasted, text)
    switched = sf.Form(**{**form.__dict__, "method": "dare_ties",
                          "values": {**form.values, "dare_ties.weight": "0.5", "dare_ties.density": "0.5; 0.7"}})
    assert "merge method" in sf.out_of_sync(switched, text)
    retyped = sf.Form(**{**form.__dict__, "values": {**form.values, "ties.density": "0.5; 0.9"}})
    assert "per-model parameters" in sf.out_of_sync(retyped, text)
    bad = sf.Form(**{**form.__dict__, "values": {**form.values, "ties.weight": "1; 2; 3"}})
    assert "weight: 3 values separated by ';' for 2 models" in sf.out_of_sync(bad, text)
    assert sf.out_of_sync(form, "merge_method: [unclosed") is None  # the merge reports the YAML's own error


# ---------------------------------------------------------------------------------------------------
# validate

def test_validate_prints_the_plan_from_headers_only(hub, parents, client):
    hub.clear_log()
    report = client.predict(recipe(parents), "", api_name="/validate")
    assert "Plan: ties of 3 models" in report
    assert re.search(r"\*\*\d+ tensors\*\*", report) and "output size" in report and "estimated time" in report
    assert "No problems found" in report
    assert f"target **{ALICE}/" not in report  # no repo name given yet
    weights = [r for r in hub.log if r.path.endswith(".safetensors") and r.method == "GET"]
    assert weights and all(r.range for r in weights), "validate must read headers by range requests only"
    assert all(int(r.range.split("-")[1]) < 64 * 1024 for r in weights if r.range), "read more than headers"


def test_validate_lists_every_problem(hub, parents, anonymous_client, tmp_path):
    bad = recipe(parents).replace(parents["chat"], "up/does-not-exist").replace(parents["math"], "up/missing-too")
    report = anonymous_client.predict(bad, "", api_name="/validate")
    assert "2 problems" in report
    assert "up/does-not-exist" in report and "up/missing-too" in report
    # Space users have no local folders and no HF_TOKEN to set: the hint is about signing in
    assert "not found on the Hub" in report and "signed in" in report
    assert "local folder" not in report and "HF_TOKEN" not in report
    assert "sign in with Hugging Face to merge" in report

    # The Space reads Hub models only, never its own disk.
    local = anonymous_client.predict(recipe(parents).replace(parents["chat"], str(tmp_path)), "", api_name="/validate")
    assert "only Hub models" in local

    schema = anonymous_client.predict(recipe(parents).replace("density: 0.5", "densty: 0.5"), "", api_name="/validate")
    assert "models[0].parameters.densty" in schema


# ---------------------------------------------------------------------------------------------------
# merge & push

def test_merge_pushes_to_the_signed_in_users_namespace(hub, parents, client, repo_id_factory, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    name = _name(repo_id_factory)
    link, lineage, card, check_target = client.predict(recipe(parents), name, False, api_name="/merge")
    target = f"{ALICE}/{name}"
    assert check_target == target
    assert f"[{target}]({hub.url}/{target})" in link and "/commit/" in link

    files = hub.files_at(target)
    assert "model.safetensors" in files and "config.json" in files
    tensors = load_safetensors(files["model.safetensors"])
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())
    readme = files["README.md"].decode()
    assert "<!-- hubmerge:begin -->" in readme
    meta = yaml.safe_load(readme.split("---")[1])
    assert meta["base_model"] == [parents["base"], parents["chat"], parents["math"]]
    assert meta["hubmerge"]["recipe"]["base_model"] == f"{parents['base']}@{hub.head(parents['base'])}"
    commits = hub.list_commits(target)
    assert len(commits) == 2 and commits[0]["author"] == ALICE  # the repo's first commit + the merge

    assert "<!-- hubmerge:begin -->" in card and parents["chat"] in card and "ties" in card
    svg = base64.b64decode(re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', lineage).group(1)).decode()
    assert svg.startswith("<svg") and all(p in svg for p in (*parents.values(), target))
    assert 'class="node output"' in svg and 'class="node base"' in svg and svg.count("<path d=") >= 3

    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in (out, err, logged, link, lineage, card):
        assert ALICE_TOKEN not in text


def test_lineage_picture_keeps_edge_labels_apart(space):
    """Three parents of one merge, each edge labelled: no two labels may overlap in the drawing."""
    import space_lineage as sl

    graph = sl.Graph()
    graph.add(sl.Node("me/merged", "me/merged", "ties", "output"))
    for i, name in enumerate(("org/base", "org/chat", "org/math")):
        graph.add(sl.Node(name, name, "0123456789ab", "base" if i == 0 else "parent"))
        graph.link(name, "me/merged", "merge (ties, base)" if i == 0 else f"merge (ties, weight=0.{i}, density=0.5)")
    svg = sl.render_svg(graph)
    labels = re.findall(r'<text class="edge-label" x="([\d.]+)" y="([\d.]+)"[^>]*>([^<]+)</text>', svg)
    assert len(labels) == 3
    boxes = [(float(x) - len(t) * sl.SMALL_W / 2, float(x) + len(t) * sl.SMALL_W / 2, float(y)) for x, y, t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            same_line = abs(a[2] - b[2]) < sl.SMALL + 2
            assert not (same_line and a[0] < b[1] and b[0] < a[1]), (a, b)


def test_merge_shows_progress_and_runs_one_at_a_time(hub, parents, client, repo_id_factory):
    """Two merges submitted together: the first reports its tqdm bars as Gradio progress; the second waits in
    the queue until the first has finished, and the Hub sees nothing of it before the first's commit."""
    first, second = _name(repo_id_factory), _name(repo_id_factory)
    hub.stall(0.3, path=rf"^/{parents['chat']}/resolve/", times=None)  # slow reads: the bar is seen moving
    hub.stall(1.0, path=rf"/api/models/{ALICE}/{first}/commit/", method="POST")
    job1 = client.submit(recipe(parents), first, False, api_name="/merge")
    while job1.status().code.name in ("STARTING", "JOINING_QUEUE"):
        time.sleep(0.02)
    job2 = client.submit(recipe(parents), second, False, api_name="/merge")
    bars = set()
    while not job1.done():
        bars |= {(p.desc, p.length, p.unit) for p in job1.status().progress_data or []}
        time.sleep(0.02)
    job2.result(timeout=60)
    assert f"{ALICE}/{first}" in job1.result()[0] and f"{ALICE}/{second}" in job2.result()[0]
    merging = [b for b in bars if b[0] == "Merging"]
    assert merging and merging[0][2] == "B" and merging[0][1] > 0, bars

    # One at a time, from the server's side: the second merge's first request (resolving its parents) comes
    # after the first merge's commit. (The client's job statuses cannot show it: each job's status is updated
    # by its own client thread, so job 2 may read "processing" before job 1's "finished" is applied.)
    log = [r.path for r in hub.log]
    first_commit = next(i for i, p in enumerate(log) if p.startswith(f"/api/models/{ALICE}/{first}/commit/"))
    second_seen = next(i for i, p in enumerate(log) if f"{ALICE}/{second}" in p)
    assert second_seen > first_commit


def test_merge_needs_sign_in_and_creates_nothing_without_it(hub, parents, anonymous_client, repo_id_factory):
    name = _name(repo_id_factory)
    with pytest.raises(AppError, match="Sign in with Hugging Face first"):
        anonymous_client.predict(recipe(parents), name, False, api_name="/merge")
    assert not _alice_api(hub).repo_exists(f"{ALICE}/{name}")


def test_a_bad_recipe_fails_before_any_repo_is_created(hub, parents, client, repo_id_factory):
    name = _name(repo_id_factory)
    hub.clear_log()
    with pytest.raises(AppError, match="up/nope"):
        client.predict(recipe(parents).replace(parents["math"], "up/nope"), name, False, api_name="/merge")
    assert not hub.requests("/api/repos/create")
    with pytest.raises(AppError, match="cannot push to the namespace 'up'"):
        client.predict(recipe(parents), "up/stolen", False, api_name="/merge")
    assert not _alice_api(hub).repo_exists(f"{ALICE}/{name}")


def test_a_failed_push_deletes_the_repo_it_created(hub, parents, client, repo_id_factory):
    name = _name(repo_id_factory)
    hub.fail_requests(500, path=rf"/api/models/{ALICE}/{name}/commit/.*", method="POST", times=None)
    with pytest.raises(AppError, match="HTTP 500"):
        client.predict(recipe(parents), name, False, api_name="/merge")
    assert hub.requests("/api/repos/create"), "push creates the repo first..."
    assert not _alice_api(hub).repo_exists(f"{ALICE}/{name}"), "...and the Space deletes it when the push failed"


def test_a_failed_push_to_an_existing_repo_keeps_it_unchanged(hub, parents, client, repo_id_factory):
    name = _name(repo_id_factory)
    target = f"{ALICE}/{name}"
    hub.create_repo(target, owner=ALICE)
    hub.commit_files(target, {"README.md": "---\nlicense: mit\n---\nmine\n"})
    before = hub.head(target)
    hub.fail_requests(500, path=rf"/api/models/{target}/commit/.*", method="POST", times=None)
    with pytest.raises(AppError):
        client.predict(recipe(parents), name, False, api_name="/merge")
    assert _alice_api(hub).repo_exists(target) and hub.head(target) == before


# ---------------------------------------------------------------------------------------------------
# check & re-merge

def _new_weights(files: dict[str, bytes]) -> bytes:
    tensors = load_safetensors(files["model.safetensors"])
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.25
    return save_safetensors(tensors)


def test_check_reports_moved_parents_and_remerge_pushes_one_commit(hub, parents, client, anonymous_client,
                                                                  repo_id_factory):
    name = _name(repo_id_factory)
    client.predict(recipe(parents), name, False, api_name="/merge")
    target = f"{ALICE}/{name}"

    head, rows = anonymous_client.predict(target, api_name="/check")  # (the Re-merge button's state is UI-only)
    assert "up to date" in head
    assert {r[0] for r in rows["data"]} == set(parents.values())

    old = hub.head(parents["chat"])
    new = hub.commit_files(parents["chat"], {"model.safetensors": _new_weights(hub.files_at(parents["chat"]))},
                           message="new weights")
    head, rows = anonymous_client.predict(target, api_name="/check")
    assert "stale" in head and parents["chat"] in head
    row = next(r for r in rows["data"] if r[0] == parents["chat"])
    assert row == [parents["chat"], "main", old[:12], new[:12], "yes"]

    commits = len(hub.list_commits(target))
    check_md, rows, link, lineage, card = client.predict(target, api_name="/remerge")
    assert f"{old[:12]} → {new[:12]}" in check_md
    assert f"[{target}]({hub.url}/{target})" in link and "Re-merged" in link
    assert len(hub.list_commits(target)) == commits + 1
    assert hub.list_commits(target)[0]["title"].startswith("hubmerge sync: 1 upstream change")
    assert new in hub.read_file(target, "README.md").decode()

    head, _ = anonymous_client.predict(target, api_name="/check")
    assert "up to date" in head
    # Nothing moved: a second re-merge is a no-op.
    _, _, link, *_ = client.predict(target, api_name="/remerge")
    assert "no re-merge needed" in link and len(hub.list_commits(target)) == commits + 1


def test_check_of_a_repo_without_a_recipe_explains(hub, parents, anonymous_client):
    with pytest.raises(AppError, match="no hubmerge recipe"):
        anonymous_client.predict(parents["chat"], api_name="/check")


# ---------------------------------------------------------------------------------------------------
# mixture of experts

def _moe_slots(experts: list[tuple[str, str, str]], shared=("", "", "")) -> list[str]:
    import space_moe as sm

    slots = [field for e in experts for field in e] + ["", "", ""] * (sm.MAX_EXPERTS - len(experts))
    return slots + list(shared)


def test_moe_tab_builds_validates_and_pushes_an_moe(hub, parents, client, anonymous_client, repo_id_factory):
    text, status = anonymous_client.predict(
        parents["base"], "cheap_embed", 1, "(auto: as mergekit-moe picks)", "bfloat16",
        *_moe_slots([(parents["chat"], "w5 w6\nw7", ""), (parents["math"], "w40 w41", "w5\n")]),
        api_name="/moe_to_yaml")
    doc = yaml.safe_load(text)
    assert doc == {"base_model": parents["base"], "gate_mode": "cheap_embed", "dtype": "bfloat16",
                   "experts_per_token": 1,
                   "experts": [{"source_model": parents["chat"], "positive_prompts": ["w5 w6", "w7"]},
                               {"source_model": parents["math"], "positive_prompts": ["w40 w41"],
                                "negative_prompts": ["w5"]}]}
    assert "valid MoE recipe" in status
    _, status = anonymous_client.predict(parents["base"], "hidden", 3, "mixtral", "bfloat16",
                                         *_moe_slots([(parents["chat"], "w5", ""), (parents["math"], "w6", "")]),
                                         api_name="/moe_to_yaml")
    assert "experts_per_token: 3 experts per token" in status

    report = client.predict(text, "", api_name="/moe_validate")
    assert "Plan: mixture of experts (Mixtral, 2 experts)" in report and "No problems found" in report

    name = _name(repo_id_factory)
    link, lineage, card = client.predict(text, name, False, api_name="/moe_merge")
    target = f"{ALICE}/{name}"
    assert f"[{target}]({hub.url}/{target})" in link and "/commit/" in link
    files = hub.files_at(target)
    assert json.loads(files["config.json"])["architectures"] == ["MixtralForCausalLM"]
    assert "## Experts" in card and "“w40 w41”" in card
    meta = yaml.safe_load(files["README.md"].decode().split("---")[1])
    assert meta["base_model"] == [parents["base"], parents["chat"], parents["math"]] and "moe" in meta["tags"]
    svg = base64.b64decode(re.search(r'src="data:image/svg\+xml;base64,([^"]+)"', lineage).group(1)).decode()
    assert all(p in svg for p in (*parents.values(), target))
