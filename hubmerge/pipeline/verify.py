"""Recipes found in cards: ``hubmerge reproduce``, ``hubmerge verify`` and ``hubmerge card``.

A target is a Hub repo (``org/name[@rev]``, read through the Hub facade at one commit SHA) or a local
folder. Its recipe is, in order: our card's ``hubmerge.recipe`` (pinned to SHAs), a mergekit-made card's
"Configuration" YAML block, or the repo's ``mergekit_config.yml``.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hubmerge.errors import HubmergeError, SourceError
from hubmerge.output.shards import content_hash, tensor_bytes, tensor_digest
from hubmerge.pipeline.card import card_text, write_card
from hubmerge.pipeline.run import MergeOptions, MergeResult, plan_spec, run_merge
from hubmerge.pipeline.tools import ToolRun, run_tool
from hubmerge.sources.model import ModelSource, looks_like_repo_id, open_local_model
from hubmerge.sources.open import open_model
from hubmerge.spec.cards import MERGEKIT_CONFIG, CardInfo, card_info, find_recipe, recipe_file
from hubmerge.spec.model import MergeSpec, ModelRef
from hubmerge.spec.tools import is_tool_spec

logger = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class CardSource:
    """A Hub repo at one commit, or a local folder: its card and a way to read its small files."""

    name: str
    is_hub: bool
    revision: str | None
    folder: Path | None
    files: list[str]
    read: Callable[[str], bytes | None]

    @property
    def display(self) -> str:
        return f"{self.name}@{self.revision[:12]}" if self.is_hub and self.revision else self.name

    def text(self, path: str) -> str | None:
        if path not in self.files:
            return None
        data = self.read(path)
        return data.decode("utf-8", errors="replace") if data is not None else None

    def card(self) -> CardInfo:
        readme = self.text("README.md")
        info = card_info(readme, self.files, source=f"{self.display}/README.md")
        if find_recipe(info) is None and recipe_file(self.files):
            info = CardInfo(info.meta, info.body, info.files, self.text(recipe_file(self.files)))
        return info

    def open_model(self, hub: Any) -> ModelSource:
        if self.is_hub:
            # The tensors as stored (what a merge wrote and the content hash covers), not an MoE view of them.
            return open_model(ModelRef(self.name, self.revision), hub=hub, moe_layout=False)
        return open_local_model(ModelRef(str(self.folder)), self.folder)


def open_target(target: str, hub: Any) -> CardSource:
    folder = Path(target).expanduser()
    if folder.is_dir():
        folder = folder.resolve()
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

        def read_local(path: str) -> bytes | None:
            p = folder / path
            return p.read_bytes() if p.is_file() else None

        return CardSource(target, False, None, folder, files, read_local)
    from hubmerge.spec.parse import parse_ref

    try:
        ref = parse_ref(target)
    except HubmergeError:
        ref = None
    if ref is None or ref.lora is not None or not looks_like_repo_id(ref.path):
        raise HubmergeError(f"{target!r} is neither a local folder nor a Hub repo id",
                            hint="pass org/name, org/name@revision or a folder holding the model and its card")
    if hub is None:
        raise HubmergeError(f"{target}: reading a Hub repo needs a Hub client")
    sha = hub.resolve(ref.path, ref.revision)
    files = [f.path for f in hub.list_files(ref.path, sha)]

    def read_hub(path: str) -> bytes | None:
        return hub.read_small_file(ref.path, sha, path, max_bytes=10 * 1024 * 1024)

    return CardSource(ref.path, True, sha, None, files, read_hub)


@dataclass
class Recipe:
    kind: str  # "hubmerge", "mergekit card" or "mergekit_config.yml"
    document: dict[str, Any]
    spec: MergeSpec
    source: CardSource
    recorded: dict[str, Any] = field(default_factory=dict)  # our hubmerge block (content_hash, device...)

    @property
    def base_dir(self) -> Path | None:
        """Local model paths in a folder's recipe are looked up next to the folder (then the cwd)."""
        return self.source.folder.parent if self.source.folder is not None else None

    def unpinned(self) -> list[str]:
        return [str(r) for r in self.spec.referenced_models()
                if not (r.revision and _SHA.match(r.revision)) and not Path(r.path).expanduser().exists()
                and not (self.base_dir is not None and (self.base_dir / r.path).exists())]


def recipe_of(source: CardSource) -> Recipe:
    from hubmerge.spec.parse import spec_from_dict

    card = source.card()
    found = find_recipe(card)
    if found is None:
        raise HubmergeError(
            f"{source.display}: no recipe found: the card has no 'hubmerge.recipe', no \"Configuration\" YAML "
            f"block, and there is no {MERGEKIT_CONFIG}",
            hint="reproduce needs a card written by hubmerge or mergekit (or a mergekit_config.yml)")
    kind, document = found
    where = {"hubmerge": "README.md hubmerge.recipe", "mergekit card": "README.md Configuration block",
             MERGEKIT_CONFIG: MERGEKIT_CONFIG}[kind]
    spec = spec_from_dict(document, source=f"{source.display}/{where}")
    block = card.meta.get("hubmerge") if kind == "hubmerge" else None
    return Recipe(kind, document, spec, source, dict(block) if isinstance(block, dict) else {})


def _warn_unpinned(recipe: Recipe) -> None:
    loose = recipe.unpinned()
    if loose:
        logger.warning("the recipe (%s) does not pin %s to a commit; using the current revision, so the result "
                       "may differ from the published model", recipe.kind, ", ".join(loose))


def reproduce(target: str, out: str | Path | None = None, *, hub: Any, device: str = "cpu",
              overwrite: bool = False, max_shard_size: int | None = None,
              show_progress: bool = True, allow_pickle: bool = False) -> tuple[MergeResult, Recipe]:
    """Run the recipe a card (ours or mergekit's) records, into ``out`` (default ./<model name>)."""
    source = open_target(target, hub)
    recipe = recipe_of(source)
    logger.info("reproducing %s from its %s", source.display, recipe.kind)
    _warn_unpinned(recipe)
    out = Path(out) if out is not None else Path(source.name.rstrip("/").split("/")[-1])
    if source.folder is not None and out.resolve() == source.folder:
        raise HubmergeError(f"the output folder {out} is the folder being reproduced",
                            hint="pass another folder with -o")
    if is_tool_spec(recipe.spec):  # an extracted adapter or a tokenizer transplant
        run = ToolRun(device=device, overwrite=overwrite, base_dir=recipe.base_dir, show_progress=show_progress,
                      allow_pickle=allow_pickle, max_shard_size=max_shard_size, title=out.name)
        return run_tool(recipe.spec, out, run, hub=hub), recipe
    options = MergeOptions(device=device, overwrite=overwrite, base_dir=recipe.base_dir,
                           max_shard_size=max_shard_size, show_progress=show_progress, allow_pickle=allow_pickle)
    result = run_merge(recipe.spec, out, options, hub=hub, card_writer=lambda plan, digest, folder: write_card(
        plan, digest, folder, title=out.name, device=device, hub=hub))
    return result, recipe


def tensor_digests(model: ModelSource) -> dict[str, bytes]:
    """Per-tensor digests (as the content hash uses them) of a model's safetensors, read one by one."""
    infos = sorted(model.tensors.values(), key=lambda i: (i.file, i.start))
    if hasattr(model.reader, "expect"):
        model.reader.expect(infos)
    out: dict[str, bytes] = {}
    for info in infos:
        tensor = model.reader.read(info)
        out[info.name] = tensor_digest(info.name, info.dtype, info.shape, tensor_bytes(tensor))
    return out


def folder_digests(folder: Path) -> dict[str, bytes]:
    model = open_local_model(ModelRef(str(folder)), folder)
    try:
        return tensor_digests(model)
    finally:
        model.close()


@dataclass
class VerifyResult:
    target: str  # display name: repo@sha or folder
    recorded: str  # content hash the card records
    remerged: str  # content hash of a fresh merge of the card's recipe
    published: str  # content hash of the tensors in the repo / folder
    differing: list[str] = field(default_factory=list)  # tensors whose bytes differ (fresh merge vs repo)
    missing: list[str] = field(default_factory=list)  # in the fresh merge, not in the repo
    extra: list[str] = field(default_factory=list)  # in the repo, not in the fresh merge
    tensors: int = 0

    @property
    def ok(self) -> bool:
        return self.recorded == self.remerged == self.published

    def problems(self) -> list[str]:
        out = []
        if self.remerged != self.recorded:
            out.append(f"a fresh merge of the recipe gives {self.remerged}, the card records {self.recorded}")
        if self.published != self.recorded:
            out.append(f"the published tensors hash to {self.published}, the card records {self.recorded}")
        return out


def verify(target: str, *, hub: Any, device: str | None = None, show_progress: bool = True,
           workdir: Path | None = None, allow_pickle: bool = False) -> VerifyResult:
    """Re-merge from the card alone (its pinned recipe) and compare with the recorded content hash and
    with the tensors actually published; name the tensors that differ."""
    source = open_target(target, hub)
    recipe = recipe_of(source)
    if recipe.kind != "hubmerge":
        raise HubmergeError(f"{source.display}: verify needs a card written by hubmerge (a 'hubmerge:' block with "
                            f"the pinned recipe and a content hash); this one has only a {recipe.kind} recipe",
                            hint=f"run 'hubmerge reproduce {target}' to merge it again without verifying")
    recorded = recipe.recorded.get("content_hash")
    if not isinstance(recorded, str) or not recorded.startswith("sha256:"):
        raise HubmergeError(f"{source.display}: the card records no content hash",
                            hint="the card was generated without merging; run 'hubmerge card DIR' on the merged "
                                 "folder, or push the merge again")
    _warn_unpinned(recipe)
    device = device or _recorded_device(recipe.recorded.get("device"))

    tool = is_tool_spec(recipe.spec)
    adapter = tool and recipe.spec.tool == "extract_lora"
    model = _open_adapter(source, hub) if adapter else source.open_model(hub)
    try:
        published = tensor_digests(model)
    finally:
        model.reader.close()
    published_hash = content_hash(published)

    with tempfile.TemporaryDirectory(prefix="hubmerge-verify-", dir=workdir) as tmp:
        out = Path(tmp) / "merged"
        if tool:  # the tool's digests come with its result: nothing to read back
            run = ToolRun(device=device, base_dir=recipe.base_dir, show_progress=show_progress,
                          allow_pickle=allow_pickle)
            done = run_tool(recipe.spec, out, run, hub=hub, card=False)
            check = VerifyResult(source.display, recorded, done.content_hash, published_hash,
                                 tensors=len(done.digests))
            merged = {k: bytes.fromhex(v) for k, v in done.digests.items()}
        else:
            options = MergeOptions(device=device, base_dir=recipe.base_dir, show_progress=show_progress,
                                   allow_pickle=allow_pickle)
            result = run_merge(recipe.spec, out, options, hub=hub)
            check = VerifyResult(source.display, recorded, result.content_hash, published_hash,
                                 tensors=len(result.plan.tensors))
            merged = None if check.ok else folder_digests(out)
        if check.ok:
            return check
    check.differing = sorted(n for n in merged.keys() & published.keys() if merged[n] != published[n])
    check.missing = sorted(merged.keys() - published.keys())
    check.extra = sorted(published.keys() - merged.keys())
    return check


def _open_adapter(source: CardSource, hub: Any):
    """The published adapter of an extract_lora repo or folder (its tensors and a reader)."""
    from hubmerge.sources.lora import open_adapter

    ref = ModelRef(source.name, source.revision) if source.is_hub else ModelRef(str(source.folder))
    return open_adapter(ref, hub=hub)


def _recorded_device(recorded: Any) -> str:
    if recorded == "cuda":
        import torch

        if torch.cuda.is_available():
            return "cuda"
        logger.warning("the model was merged on cuda; verifying on cpu (some methods may round differently)")
    return "cpu"


def regenerate_card(target: str, *, hub: Any, title: str | None = None, repo_id: str | None = None,
                    write: bool = True) -> tuple[str, Path | None]:
    """``hubmerge card``: the card of a merge output folder (recomputing the content hash from its tensors
    and taking the recipe from its README or mergekit_config.yml) or of a spec (planned from headers, with
    no content hash). Returns the card and, for a folder written in place, the README's path."""
    path = Path(target).expanduser()
    if path.is_dir():
        source = open_target(str(path), hub)
        recipe = recipe_of(source)
        spec = recipe.spec
        digest = content_hash(folder_digests(path.resolve()))
        old = recipe.recorded.get("content_hash")
        if isinstance(old, str) and old != digest:
            logger.warning("%s: the tensors hash to %s, not to the %s its card recorded", path, digest, old)
        device = recipe.recorded.get("device") or "cpu"
        base_dir = recipe.base_dir
        default_title = path.resolve().name
        existing = source.text("README.md")
    elif path.is_file():
        from hubmerge.spec import load_spec

        spec = load_spec(path)
        digest, device, base_dir, existing = None, "cpu", path.resolve().parent, None
        default_title = (spec.hubmerge.target or path.stem).split("/")[-1]
    else:
        raise SourceError(f"{target}: no such spec file or folder",
                          hint="pass a spec (YAML) or a folder holding a merge output")
    repo_id = repo_id or spec.hubmerge.target
    if is_tool_spec(spec):
        raise HubmergeError(f"hubmerge card does not regenerate {spec.tool} cards; the card is written with the "
                            "output", hint="run the recipe again (hubmerge merge / push) to rewrite it")
    plan = plan_spec(spec, base_dir=base_dir, hub=hub)
    try:
        card = card_text(plan, digest, title=title or default_title, device=device, repo_id=repo_id, hub=hub,
                         existing=existing)
    finally:
        for m in plan.models:
            m.close()
    if path.is_dir() and write:
        readme = path / "README.md"
        readme.write_text(card, encoding="utf-8")
        return card, readme
    return card, None
