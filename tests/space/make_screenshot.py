"""Take the README's screenshot of the Space (docs/space.png) along the browser test's own path.

    python tests/space/make_screenshot.py [docs/space.png]

Offline and self-contained: it starts the loopback test Hub, publishes three tiny demo models on it, launches
the Space in-process, and drives Debian's chromium (Playwright, as in test_space_browser.py): sign in, fill
the form, Merge & push, wait for the link and the lineage graph, then photograph the page down to the
lineage graph. Emoji render only where a colour-emoji font is installed (Debian: fonts-noto-color-emoji).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE.parent), str(HERE)]

import conftest  # noqa: E402,F401 - fixes HF_ENDPOINT & co. before huggingface_hub is imported

MAX_BYTES = 300_000


def _shrink(png: bytes) -> bytes:
    """The README picture must stay small: fall back to a 256-colour palette when the PNG is too big."""
    if len(png) <= MAX_BYTES:
        return png
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default=str(ROOT / "docs" / "space.png"))
    args = parser.parse_args(argv)

    import os

    from browser_support import MergeForm, fill_form, merge_and_wait, open_page, sign_in
    from helpers import family, publish_folder
    from hubserver import HubServer
    from space_support import ALICE, ALICE_TOKEN, SPACE_DIR

    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    os.environ["HUBMERGE_LOCAL_OAUTH_TOKEN"] = ALICE_TOKEN
    with HubServer(port=conftest.HUB_PORT, token=os.environ["HF_TOKEN"]) as hub, \
            tempfile.TemporaryDirectory() as tmp:
        hub.add_token(ALICE_TOKEN, user=ALICE, role="write")
        ids = {}
        for name, folder in family(Path(tmp)).items():
            if name == "code":
                continue
            repo = ids[name] = f"tiny-llama/{name}"
            hub.create_repo(repo, owner="tiny-llama")
            publish_folder(hub, repo, folder)
        sys.path.insert(0, str(SPACE_DIR))
        import app

        _, url, _ = app.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
        try:
            form = MergeForm(parents=[ids["chat"], ids["math"]], base=ids["base"], method="ties",
                             params={"weight": "0.6; 0.4", "density": "0.5"}, repo_name="chat-math-ties")
            with open_page(viewport={"width": 1280, "height": 1000}) as browsing:
                page = browsing.page
                sign_in(page, url.rstrip("/"), ALICE)
                fill_form(page, form)
                merge_and_wait(page)
                lineage = page.locator("#lineage img")
                lineage.wait_for(state="visible")
                page.wait_for_timeout(500)  # let the toast-free page settle (fonts, the image decode)
                # Page coordinates (the click may have scrolled the viewport): down to the lineage graph.
                height = int(lineage.evaluate("e => e.getBoundingClientRect().bottom + window.scrollY")) + 24
                png = page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": height})
        finally:
            app.demo.close()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_shrink(png))
    print(f"{out}: {out.stat().st_size / 1000:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
