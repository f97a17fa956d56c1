"""Drive the Space in a real headless browser: Playwright (the PyPI package) on Debian's chromium.

Shared by the browser test (test_space_browser.py) and the README screenshot script (make_screenshot.py),
so the picture in the README comes from exactly the path the test exercises.

No browser download (`playwright install` is never run): the system chromium is launched by path. Every
request that is not to 127.0.0.1 is aborted and recorded, so the page cannot reach the network even
where the machine could.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

CHROMIUM = Path(os.environ.get("HUBMERGE_CHROMIUM", "/usr/bin/chromium"))
# Root in a container has no user namespaces for chromium's sandbox; the rest keeps it quiet and offline.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions"]
LOCAL_PREFIXES = ("http://127.0.0.1", "ws://127.0.0.1", "http://localhost", "ws://localhost", "data:", "blob:",
                  "about:")
VIEWPORT = {"width": 1280, "height": 900}


@dataclass
class Browsing:
    page: object  # playwright.sync_api.Page
    blocked: list[str] = field(default_factory=list)  # non-loopback URLs the page tried to load
    console_errors: list[str] = field(default_factory=list)


@contextmanager
def open_page(*, viewport: dict | None = None, scale: float = 1) -> Iterator[Browsing]:
    """A fresh headless chromium page that can only talk to loopback."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)  # a loaded 2-core CI machine renders Gradio's page in seconds, not ms
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport=viewport or VIEWPORT, device_scale_factor=scale)
            browsing = Browsing(page=None)

            def only_loopback(route) -> None:
                url = route.request.url
                if url.startswith(LOCAL_PREFIXES):
                    route.continue_()
                else:
                    browsing.blocked.append(url)
                    route.abort()

            ctx.route("**/*", only_loopback)
            page = ctx.new_page()
            page.on("console", lambda m: m.type == "error" and browsing.console_errors.append(m.text))
            page.set_default_timeout(15_000)
            browsing.page = page
            yield browsing
        finally:
            browser.close()


def sign_in(page, url: str, user: str) -> None:
    """Click "Sign in with Hugging Face" and follow the (local stand-in's) OAuth redirects back."""
    from playwright.sync_api import expect

    page.goto(url + "/")
    login = page.locator("#login")
    expect(login).to_contain_text("Sign in")
    with page.expect_navigation(url=lambda u: "/login/" not in u):
        login.click()
    expect(page.locator("#login")).to_contain_text(f"Logout ({user})")
    expect(page.locator("#who")).to_contain_text(f"Signed in as {user}")


def choose(page, label: str, option: str) -> None:
    """Pick an option of a gr.Dropdown."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


@dataclass
class MergeForm:
    parents: list[str]
    base: str
    method: str
    params: dict[str, str]  # parameter name -> text typed into that method's field
    repo_name: str


def field(page, elem_id: str):
    """The text field of the gr.Textbox with this elem_id."""
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def type_into(locator, text: str) -> None:
    """Replace a field's text with key presses, as a person types (Gradio's `input` event follows keys)."""
    locator.fill("")
    locator.press_sequentially(text)


def recipe_text(page) -> str:
    return page.locator("#recipe .cm-content").inner_text()


def hold_yaml_updates(page) -> Callable[[], None]:
    """From now on, the browser's requests that bring the YAML up to date with the form are held back (as a slow
    link would hold them) until the returned function is called. Makes "the form is ahead of the YAML" a state a
    test can be in for sure, not a race it wins on a quiet machine and loses on a loaded one."""
    fn_index = page.evaluate(
        "() => window.gradio_config.dependencies.find(d => d.api_name === 'form_to_yaml').id")
    held = []

    def hold(route) -> None:
        body = route.request.post_data_json if route.request.method == "POST" else None
        if isinstance(body, dict) and body.get("fn_index") == fn_index:
            held.append(route)
        else:
            route.fallback()

    page.route(_JOIN, hold)

    def release() -> None:
        for route in held:  # before unroute, which would settle held routes itself
            route.fallback()
        held.clear()
        page.unroute(_JOIN, hold)

    return release


_JOIN = "**/gradio_api/queue/join*"


def fill_form(page, form: MergeForm, *, paste_parents: bool = False) -> Callable[[], None] | None:
    """Fill the form (not the YAML): the app writes the YAML from it.

    ``paste_parents``: put the parents in last with the YAML's update from that field held back (see
    ``hold_yaml_updates``); returns the function that lets it through."""
    from playwright.sync_api import expect

    choose(page, "Merge method", form.method)
    if not paste_parents:
        type_into(field(page, "models"), "\n".join(form.parents))
    type_into(field(page, "base"), form.base)
    for name, text in form.params.items():
        box = field(page, f"p-{form.method}-{name}")
        expect(box).to_be_visible()
        type_into(box, text)
    field(page, "repo-name").fill(form.repo_name)  # not part of the YAML
    recipe = page.locator("#recipe .cm-content")
    expect(recipe).to_contain_text(f"merge_method: {form.method}")
    expect(recipe).to_contain_text(f"base_model: {form.base}")
    if paste_parents:
        release = hold_yaml_updates(page)
        field(page, "models").fill("\n".join(form.parents))
        return release
    for parent in form.parents:
        expect(recipe).to_contain_text(parent)
    return None


def merge_and_wait(page, *, timeout_ms: int = 45_000):
    """Click "Merge & push" and wait for the link to the new repo; returns the link locator."""
    page.locator("#merge-btn").click()
    link = page.locator("#result a").first
    link.wait_for(state="visible", timeout=timeout_ms)
    return link
