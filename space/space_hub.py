"""What the Space's buttons do, in terms of the hubmerge library, without Gradio.

Thin on purpose: parsing is ``hubmerge.spec``, planning ``hubmerge.pipeline.run.plan_spec``'s pieces, pushing
``hubmerge.pipeline.push.push``, freshness ``hubmerge.hub.watch.check`` and ``hubmerge.pipeline.sync.sync``. What is Space-specific lives here:

- the user's token (from OAuth) is the only credential: every call builds a ``Hub`` with it, or anonymous;
  the Space's own ``HF_TOKEN`` secret, if any, is never used to act for a user;
- recipes may name Hub models only (a local path would read the Space's own disk);
- a repo the Space created is deleted again if the push fails, so a failed merge leaves nothing behind;
- messages never contain the token (``redact``).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubmerge.errors import HubError, HubmergeError, SpecError
from hubmerge.hub.client import Hub
from hubmerge.hub.lineage import LineageBuilder, lineage_of
from hubmerge.merge.plan import MergePlan, build_plan
from hubmerge.output.shards import DEFAULT_MAX_SHARD_SIZE
from hubmerge.pipeline.run import shard_layout
from hubmerge.sources.hub_model import default_endpoint
from hubmerge.sources.model import ModelSource
from hubmerge.sources.open import open_model
from hubmerge.spec import format_size, parse_spec
from hubmerge.spec.cards import card_info, parents_of
from hubmerge.spec.frontmatter import split_front_matter
from hubmerge.spec.model import MergeSpec, ModelRef
from hubmerge.spec.moe import is_moe_spec
from hubmerge.spec.pin import map_model_refs

logger = logging.getLogger("hubmerge.space")

# Rough throughput of a CPU Space, for the time estimate only: Hub range reads, merging, uploading.
READ_BYTES_PER_S = 80e6
MERGE_BYTES_PER_S = 400e6
UPLOAD_BYTES_PER_S = 40e6
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def make_hub(token: str | None) -> Hub:
    """The user's Hub: their token, or anonymous; never the machine's own token."""
    return Hub(endpoint=default_endpoint(), token=token or False, use_cache=False)


# The Space reads Hub models only and acts with the signed-in user's OAuth token: hints about local folders
# or the HF_TOKEN environment variable (the CLI's) do not apply here.
SPACE_HINTS = {
    (HubError.NOT_FOUND, "repo"): "check the repo id on the Hub; a private model can be merged only when you "
                                  "are signed in with an account that can read it",
    (HubError.GATED, None): "accept the model's terms on its Hub page with the account you signed in with",
    (HubError.AUTH, None): "sign in with Hugging Face again (the Space acts with your sign-in, no token to set)",
}


def space_text(exc: HubmergeError, what: object = None) -> str:
    """An error as the Space says it: a missing, gated or forbidden repo named with the Hub's reason and a
    hint for a signed-in Space user (the CLI's hints name local folders and HF_TOKEN)."""
    if isinstance(exc, HubError):
        what = what if what is not None else exc.subject
        hint = SPACE_HINTS.get((exc.kind, exc.missing)) or SPACE_HINTS.get((exc.kind, None))
        if hint is not None:
            label = "not found on the Hub" if exc.kind == HubError.NOT_FOUND else "cannot be read"
            head = f"{what}: {label}" if what is not None else label.capitalize()
            return f"{head} ({exc.reason or exc.message})\n  hint: {hint}"
    text = str(exc)
    return f"{what}: {text}" if what is not None else text


def redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def human_seconds(s: float) -> str:
    if s < 60:
        return f"{max(s, 1):.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def estimate_seconds(plan: MergePlan) -> float:
    return (plan.input_bytes / READ_BYTES_PER_S + plan.input_bytes / MERGE_BYTES_PER_S
            + plan.total_bytes / UPLOAD_BYTES_PER_S)


# ---------------------------------------------------------------------------------------------------
# who and where

@dataclass
class User:
    name: str
    orgs: list[str]


def whoami(hub: Hub) -> User:
    info = hub.whoami()
    return User(info["name"], [o["name"] for o in info.get("orgs") or [] if isinstance(o, dict) and o.get("name")])


def target_repo(user: User, repo_name: str) -> str:
    """``name`` goes to the user's namespace; ``org/name`` is allowed for the user's own organisations."""
    name = (repo_name or "").strip()
    if not name:
        raise SpecError("name the repo to create (e.g. my-merge)", path="target repo")
    namespace, _, rest = name.rpartition("/")
    namespace = namespace or user.name
    if namespace not in (user.name, *user.orgs):
        raise SpecError(f"you ({user.name}) cannot push to the namespace {namespace!r}", path="target repo",
                        hint=f"use a plain name to push to {user.name}/<name>")
    if not REPO_ID_RE.match(rest) or ".." in rest or rest.endswith((".git", ".")):
        raise SpecError(f"{rest!r} is not a valid repo name", path="target repo",
                        hint="letters, digits, '-', '_' and '.', at most 96 characters")
    return f"{namespace}/{rest}"


# ---------------------------------------------------------------------------------------------------
# the recipe

def hub_only(spec: MergeSpec) -> None:
    """Every model the recipe names must be a Hub repo id (the Space must not read its own disk)."""
    bad: list[str] = []

    def check(ref: ModelRef) -> ModelRef:
        parts = ref.path.split("/")
        local = Path(ref.path).expanduser()
        if (len(parts) != 2 or not all(REPO_ID_RE.match(p) for p in parts) or ref.path.startswith((".", "~"))
                or local.is_absolute() or local.exists()):
            bad.append(ref.path)
        return ref

    map_model_refs(spec.raw, check)
    if bad:
        raise SpecError(f"only Hub models (org/name, org/name@revision) can be merged here, not {bad[0]!r}",
                        path="models", hint="upload the model to the Hub first")


def load_recipe(text: str) -> MergeSpec:
    spec = parse_spec(text or "", source="recipe")
    hub_only(spec)
    return spec


@dataclass
class Validation:
    ok: bool
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""


def validate(text: str, *, token: str | None = None, repo_name: str = "") -> Validation:
    """Schema, meaning and headers-only compatibility checks; every problem found, nothing written."""
    problems: list[str] = []
    notes: list[str] = []
    summary: dict[str, Any] = {}
    try:
        spec = load_recipe(text)
    except HubmergeError as exc:
        return _validation([str(exc)], notes, summary, token)
    hub = make_hub(token)
    wanted = (repo_name or spec.hubmerge.target or "").strip()
    if token and not wanted:
        notes.append("name the target repo before merging (it goes to your namespace)")
    elif token:
        try:
            user = whoami(hub)
            target = target_repo(user, wanted)
            summary["target"] = target
            exists = hub.repo_exists(target)
            if exists:
                hub.check_write(target)
            notes.append(f"target **{target}**: " + ("exists; the merge lands as one new commit" if exists
                                                      else "a new repo, created only when the merge succeeds"))
        except HubmergeError as exc:
            problems.append(str(exc))
    else:
        notes.append("sign in with Hugging Face to merge: the model goes to your namespace")
    sources: dict[ModelRef, ModelSource] = {}
    try:
        for ref in spec.referenced_models():
            try:
                sources[ref] = open_model(ref, hub=hub)
            except HubmergeError as exc:
                problems.append(space_text(exc, ref))
        if len(sources) == len(spec.referenced_models()):  # plan only when every parent could be opened
            try:
                plan = _plan(spec, sources)
            except HubmergeError as exc:
                problems.append(str(exc))
            else:
                summary.update(plan_summary(spec, plan))
    finally:
        for s in sources.values():
            s.close()
    return _validation(problems, notes, summary, token)


def _plan(spec, sources: dict[ModelRef, ModelSource]):
    if is_moe_spec(spec):  # a mixture-of-experts recipe
        from hubmerge.merge.moe.plan import MoEPlanner

        return MoEPlanner(spec, sources).plan()
    return build_plan(spec, sources)


def plan_summary(spec: MergeSpec, plan: MergePlan) -> dict[str, Any]:
    max_shard = spec.hubmerge.max_shard_size or DEFAULT_MAX_SHARD_SIZE
    shards = shard_layout(plan, max_shard)
    return {
        "merge_method": spec.merge_method,
        "models": [{"name": m.name, "revision": m.revision} for m in plan.models],
        "layers": plan.num_layers,
        "tensors": len(plan.tensors),
        "output_bytes": plan.total_bytes,
        "input_bytes": plan.input_bytes,
        "shards": len(shards),
        "estimated_seconds": round(estimate_seconds(plan), 1),
        "dtype": plan.tensors[0].dtype if plan.tensors else None,
        "moe": f"{plan.family.display}, {len(spec.experts)} experts" if is_moe_spec(spec) else None,
    }


def _validation(problems: list[str], notes: list[str], summary: dict[str, Any], token: str | None) -> Validation:
    problems = [redact(p, token) for p in problems]
    lines: list[str] = []
    if "tensors" in summary:
        what = (f"mixture of experts ({summary['moe']})" if summary.get("moe")
                else f"{summary['merge_method']} of {len(summary['models'])} models")
        lines += [f"### Plan: {what}",
                  "", "| model | revision |", "|---|---|"]
        lines += [f"| {m['name']} | `{(m['revision'] or 'local')[:12]}` |" for m in summary["models"]]
        lines += ["", f"- **{summary['tensors']} tensors** in {summary['layers']} layers, output dtype "
                  f"{summary['dtype']}",
                  f"- output size **{format_size(summary['output_bytes'])}** in {summary['shards']} shard(s); "
                  f"reads {format_size(summary['input_bytes'])} by range requests",
                  f"- estimated time **~{human_seconds(summary['estimated_seconds'])}** on a CPU Space "
                  f"(rough: reads at {READ_BYTES_PER_S / 1e6:.0f} MB/s, uploads at "
                  f"{UPLOAD_BYTES_PER_S / 1e6:.0f} MB/s)"]
    lines += [f"- {n}" for n in notes]
    if problems:
        lines += ["", f"### {len(problems)} problem{'s' if len(problems) != 1 else ''}", ""]
        lines += [f"- ❌ {p}" for p in problems]
    else:
        lines += ["", "✅ **No problems found.** Nothing was downloaded but the safetensors headers."]
    return Validation(not problems, problems, summary, "\n".join(lines))


# ---------------------------------------------------------------------------------------------------
# merge & push

def delete_if_created(hub: Hub, repo_id: str) -> bool:
    """Remove a repo this Space created for a merge that did not land. Best-effort; returns whether it went."""
    try:
        hub.delete_repo(repo_id)
        logger.info("deleted %s: the push failed, so the new repo is not left behind", repo_id)
        return True
    except HubmergeError as exc:
        logger.warning("could not delete %s after a failed push: %s", repo_id, exc.message)
        return False


@dataclass
class Pushed:
    repo_id: str
    changed: bool
    commit_url: str | None
    repo_url: str
    content_hash: str
    seconds: float
    readme: str | None


def merge_and_push(text: str, *, token: str, repo_name: str, private: bool,
                   show_progress: bool = True) -> Pushed:
    from hubmerge.pipeline.push import push
    from hubmerge.pipeline.run import plan_spec

    start = time.perf_counter()
    spec = load_recipe(text)
    hub = make_hub(token)
    user = whoami(hub)
    target = target_repo(user, repo_name or spec.hubmerge.target or "")
    # Everything that can be checked without writing is checked before push() creates the repo.
    plan = plan_spec(spec, hub=hub)
    for m in plan.models:
        m.close()
    existed = hub.repo_exists(target)
    if existed:
        hub.check_write(target)
    try:
        result = push(spec, hub=make_hub(token), repo_id=target, private=private, show_progress=show_progress)
    except BaseException:
        if not existed:
            delete_if_created(hub, target)
        raise
    return _pushed(hub, target, result, start)


def _pushed(hub: Hub, target: str, result, start: float) -> Pushed:
    readme = hub.readme(target, result.commit_sha)
    return Pushed(target, result.changed, result.commit_url, f"{hub.endpoint}/{target}", result.content_hash,
                  time.perf_counter() - start, readme)


def lineage_picture(pushed: Pushed, token: str | None) -> str:
    """The result's lineage (hubmerge's walk through the cards) as an <img> of an SVG drawn here."""
    import space_lineage as sl

    hub = make_hub(token)
    meta = split_front_matter(pushed.readme)[0] if pushed.readme else {}
    block = meta.get("hubmerge") if isinstance(meta.get("hubmerge"), dict) else {}
    recipe = block.get("recipe") if isinstance(block.get("recipe"), dict) else {}
    digest = str(block.get("content_hash") or pushed.content_hash or "")
    subtitle = " · ".join(x for x in (str(recipe.get("merge_method") or ""), digest[7:19]) if x)
    try:
        lineage = lineage_of(pushed.repo_id, hub=hub, depth=3)
    except HubmergeError as exc:  # the pushed card itself unreadable: walk from the parents it names
        logger.info("lineage walk: %s", redact(exc.message, token))
        links = parents_of(card_info(pushed.readme, source=f"{pushed.repo_id}/README.md"))
        lineage = LineageBuilder(hub, depth=2).from_parents(pushed.repo_id, links)
    graph = sl.from_lineage(lineage, subtitle=subtitle)
    return sl.svg_img_tag(sl.render_svg(graph), alt=f"lineage of {pushed.repo_id}")


# ---------------------------------------------------------------------------------------------------
# check & re-merge

def check_target(target: str, *, token: str | None):
    from hubmerge.hub.watch import check

    target = (target or "").strip()
    if not target or "/" not in target:
        raise SpecError("give the merged repo as owner/name", path="repo to check")
    return check(make_hub(token), target)


def remerge(target: str, *, token: str, show_progress: bool = True):
    """(report, Pushed or None): re-merge and push one commit if a tracked parent moved."""
    from hubmerge.hub.watch import check
    from hubmerge.pipeline.sync import sync

    start = time.perf_counter()
    target = (target or "").strip()
    hub = make_hub(token)
    whoami(hub)
    report = check(hub, target)
    hub_only_recipe(report.recipe)
    report, result = sync(hub, target, show_progress=show_progress)
    if result is None:
        return report, None
    return report, _pushed(hub, target, result, start)


def hub_only_recipe(recipe: dict[str, Any]) -> None:
    from hubmerge.spec.parse import spec_from_dict

    try:
        hub_only(spec_from_dict(recipe, source="card recipe"))
    except SpecError:
        raise
    except HubmergeError as exc:
        raise HubError(f"the recorded recipe is not valid any more: {exc.message}") from None
