"""The Space in a real browser: headless chromium (Debian's, driven by Playwright) signs in through the local
OAuth stand-in, fills the form, clicks Merge & push and waits for the link; the test Hub's own records then
show the repo, our card and the shards, and the weights are the task-arithmetic formula of the parents."""

from __future__ import annotations

import itertools
import re
import time

import pytest
import torch
import yaml

pytest.importorskip("playwright.sync_api", reason="the browser test needs the test extra (playwright)")

from browser_support import CHROMIUM, MergeForm, fill_form, merge_and_wait, open_page, recipe_text, sign_in  # noqa: E402
from helpers import load_folder, publish_folder  # noqa: E402
from playwright.sync_api import expect  # noqa: E402
from safetensors.torch import load as load_safetensors  # noqa: E402
from space_support import ALICE, ALICE_TOKEN  # noqa: E402

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"no chromium at {CHROMIUM}: install Debian's `chromium` package (.ci/run does)",
)

_runs = itertools.count(1)
WEIGHTS = (0.6, 0.4)
LAMBDA = 0.9


def _expected(tiny_family) -> dict[str, torch.Tensor]:
    """Task arithmetic written out here: base + lambda * sum_i w_i (x_i - base), in float32, stored bf16."""
    base, chat, math = (load_folder(tiny_family / n) for n in ("base", "chat", "math"))
    out = {}
    for name, b in base.items():
        b32 = b.float()
        delta = WEIGHTS[0] * (chat[name].float() - b32) + WEIGHTS[1] * (math[name].float() - b32)
        out[name] = (b32 + LAMBDA * delta).to(torch.bfloat16)
    return out


@pytest.fixture
def parents(hub, tiny_family):
    """base / chat / math on the test Hub under short names: the browser types them key by key."""
    run = next(_runs)
    ids = {name: f"up/ui{run}-{name}" for name in ("base", "chat", "math")}
    for name, repo in ids.items():
        hub.create_repo(repo, owner="up")
        publish_folder(hub, repo, tiny_family / name)
    return ids


def test_browser_signs_in_fills_the_form_merges_and_pushes(space, hub, parents, tiny_family, repo_id_factory,
                                                           monkeypatch, tmp_path, record_property, capfd):
    _, url = space
    monkeypatch.setenv("HUBMERGE_LOCAL_OAUTH_TOKEN", ALICE_TOKEN)  # what "Sign in" puts in the session
    name = repo_id_factory(namespace=ALICE).split("/", 1)[1]
    target = f"{ALICE}/{name}"
    form = MergeForm(parents=[parents["chat"], parents["math"]], base=parents["base"], method="task_arithmetic",
                     params={"weight": "; ".join(map(str, WEIGHTS)), "lambda": str(LAMBDA)}, repo_name=name)
    shot = tmp_path / "space-merged.png"
    started = time.perf_counter()
    with open_page() as browsing:
        page = browsing.page
        try:
            sign_in(page, url, ALICE)
            release_yaml = fill_form(page, form, paste_parents=True)
            # Only the chosen method's parameters are on screen.
            assert page.locator("#p-task_arithmetic-weight").is_visible()
            assert not page.locator("#p-ties-weight").is_visible() and not page.locator("#p-slerp-t").is_visible()

            # The parents were pasted and the YAML's update is still on its way (held back), so the YAML, which
            # is what gets merged, does not name them yet: Merge refuses instead of merging something the form
            # does not show...
            assert parents["chat"] not in recipe_text(page)
            # A synthetic click: a real one blurs the field first, which sends another update (also held).
            page.locator("#merge-btn").dispatch_event("click")
            expect(page.get_by_text("the YAML has not caught up").first).to_be_visible()
            assert parents["chat"] not in recipe_text(page)
            # ...while the update arriving, and leaving the field, bring the YAML up to date.
            release_yaml()
            page.locator("h1").first.click()
            for parent in form.parents:
                expect(page.locator("#recipe .cm-content")).to_contain_text(parent)
            assert not hub.requests(re.escape(target)), "the refused click must not reach the target repo"

            link = merge_and_wait(page)
            assert link.inner_text() == target and link.get_attribute("href") == f"{hub.url}/{target}"
            page.locator("#lineage img").wait_for(state="visible")
            page.locator("#card").get_by_text(parents["chat"]).first.wait_for(state="visible")
        finally:  # on failure too: the picture is the quickest way to see what went wrong
            page.screenshot(path=str(shot), full_page=True)
    record_property("screenshot", str(shot))  # in the JUnit XML; and on the terminal, past the capture:
    with capfd.disabled():
        print(f"\n[space browser] screenshot: {shot} ({time.perf_counter() - started:.1f} s in the browser)")
    assert shot.stat().st_size > 10_000

    # The test Hub's records: the repo, made by alice, holding our card and the shards.
    commits = hub.list_commits(target)
    assert commits and commits[0]["author"] == ALICE
    files = hub.files_at(target)
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    assert shards and "config.json" in files
    readme = files["README.md"].decode()
    meta = yaml.safe_load(readme.split("---")[1])
    assert meta["base_model_relation"] == "merge"
    assert meta["base_model"] == [parents["base"], parents["chat"], parents["math"]]
    recipe = meta["hubmerge"]["recipe"]
    assert recipe["merge_method"] == "task_arithmetic" and recipe["parameters"] == {"lambda": LAMBDA}
    assert [m["parameters"]["weight"] for m in recipe["models"]] == list(WEIGHTS)
    assert meta["hubmerge"]["content_hash"].startswith("sha256:")
    assert "<!-- hubmerge:begin -->" in readme

    merged: dict[str, torch.Tensor] = {}
    for shard in shards:
        merged.update(load_safetensors(files[shard]))
    expected = _expected(tiny_family)
    assert sorted(merged) == sorted(expected)
    for tensor_name, want in expected.items():
        assert merged[tensor_name].dtype == torch.bfloat16
        torch.testing.assert_close(merged[tensor_name].float(), want.float(), rtol=1e-2, atol=1e-2,
                                   msg=lambda m, n=tensor_name: f"{n}: {m}")

    out, err = capfd.readouterr()
    assert ALICE_TOKEN not in out + err
