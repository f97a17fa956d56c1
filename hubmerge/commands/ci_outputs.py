"""What the CLI leaves for a CI runner: step outputs and a Markdown job summary (GitHub Actions).

Nothing happens unless the runner sets the files' paths in the environment:

* ``GITHUB_OUTPUT``: ``name=value`` lines appended for the step's outputs (``changed``, ``commit-url``,
  ``revision``, ``pr-url``), which the composite action (``action.yml``) maps to its own outputs;
* ``GITHUB_STEP_SUMMARY``: Markdown appended for the job summary: a sources table (model, pinned SHA),
  the upstream changes since the last hubmerge card of the target, and the merge's lineage as a
  ```` ```mermaid ```` block (GitHub renders it).

Reporting never fails a command: any error here is logged as a warning and ignored. No token ever
reaches these files (only repo ids, SHAs and URLs are written).

Other commands (``check``/``sync``) can reuse the building blocks: :func:`write_outputs`,
:func:`append_summary`, :func:`sources_table`, :func:`changes_section` and :func:`mermaid_lineage`.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from hubmerge.hub import Hub
from hubmerge.hub import lineage as lineage_walk
from hubmerge.output.lineage import Lineage, direct_lineage
from hubmerge.pipeline.push import target_of
from hubmerge.sources.hub_model import default_endpoint
from hubmerge.spec.frontmatter import recorded_block
from hubmerge.spec.parse import parse_ref
from hubmerge.spec.pin import map_model_refs

logger = logging.getLogger(__name__)

OUTPUT_ENV = "GITHUB_OUTPUT"
SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
SUMMARY_LIMIT = 1024 * 1024  # GitHub refuses step summaries over 1 MiB


@dataclass(frozen=True)
class Source:
    """One input model as shown in the summary."""

    name: str  # Hub repo id or local path
    revision: str | None  # pinned commit SHA (None for local folders)
    is_hub: bool
    role: str = "model"  # "base" or "model"


def enabled() -> bool:
    return bool(os.environ.get(OUTPUT_ENV) or os.environ.get(SUMMARY_ENV))


# -- low level ---------------------------------------------------------------------------------


def write_outputs(values: Mapping[str, Any]) -> None:
    """Append ``name=value`` lines to $GITHUB_OUTPUT (a heredoc for multi-line values)."""
    path = os.environ.get(OUTPUT_ENV)
    if not path:
        return
    lines = []
    for name, value in values.items():
        text = _output_text(value)
        if "\n" in text or "\r" in text:
            delimiter = f"ghadelimiter_{secrets.token_hex(8)}"
            lines.append(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
        else:
            lines.append(f"{name}={text}\n")
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(lines)
    except OSError as exc:
        logger.warning("could not write step outputs to %s: %s", OUTPUT_ENV, exc)


def _output_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def append_summary(markdown: str) -> None:
    """Append Markdown to $GITHUB_STEP_SUMMARY (truncated to stay under GitHub's 1 MiB cap)."""
    path = os.environ.get(SUMMARY_ENV)
    if not path:
        return
    data = markdown.encode("utf-8")
    if len(data) > SUMMARY_LIMIT - 1024:
        data = data[: SUMMARY_LIMIT - 1024].decode("utf-8", errors="ignore").encode("utf-8")
        data += b"\n\n_(summary truncated)_\n"
    try:
        with open(path, "ab") as f:
            f.write(data if data.endswith(b"\n") else data + b"\n")
    except OSError as exc:
        logger.warning("could not write the job summary to %s: %s", SUMMARY_ENV, exc)


# -- building blocks ---------------------------------------------------------------------------


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("`", "'")


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "—"


def _sha_link(endpoint: str | None, source: Source, sha: str | None) -> str:
    if not sha:
        return "—"
    if endpoint and source.is_hub:
        return f"[`{sha[:12]}`]({endpoint}/{source.name}/commit/{sha})"
    return f"`{sha[:12]}`"


def sources_table(sources: Iterable[Source], *, endpoint: str | None = None,
                  previous: Mapping[str, str | None] | None = None) -> str:
    """A Markdown table: role, model, pinned SHA (and the previously pinned SHA when known)."""
    with_previous = previous is not None
    header = "| Role | Model | Pinned revision |" + (" Previous |" if with_previous else "")
    rule = "|---|---|---|" + ("---|" if with_previous else "")
    rows = [header, rule]
    for s in sources:
        model = f"[{_md(s.name)}]({endpoint}/{s.name})" if (endpoint and s.is_hub) else f"`{_md(s.name)}`"
        pinned = _sha_link(endpoint, s, s.revision) if s.is_hub else "local folder"
        row = f"| {s.role} | {model} | {pinned} |"
        if with_previous:
            row += f" {_sha_link(endpoint, s, previous.get(s.name)) if s.is_hub else '—'} |"
        rows.append(row)
    return "\n".join(rows) + "\n"


def upstream_changes(sources: Iterable[Source], previous: Mapping[str, str | None] | None) -> list[tuple[str, str | None, str | None]]:
    """(model, previous SHA, current SHA) for each Hub source whose pin differs from the previous card."""
    if previous is None:
        return []
    return [(s.name, previous.get(s.name), s.revision) for s in sources
            if s.is_hub and previous.get(s.name) != s.revision]


def changes_section(sources: list[Source], previous: Mapping[str, str | None] | None, *, target: str | None,
                    endpoint: str | None = None) -> str:
    lines = ["### Upstream changes", ""]
    if previous is None:
        lines.append(f"No earlier hubmerge card on `{_md(target or 'the target')}`: this is the first merge.")
        return "\n".join(lines) + "\n"
    changes = upstream_changes(sources, previous)
    if not changes:
        lines.append("None: every source is at the revision pinned by the previous merge.")
    for name, old, new in changes:
        source = next(s for s in sources if s.name == name)
        lines.append(f"- `{_md(name)}`: {_sha_link(endpoint, source, old) if old else 'unpinned'} → "
                     f"{_sha_link(endpoint, source, new)}")
    removed = sorted(set(previous) - {s.name for s in sources})
    for name in removed:
        lines.append(f"- `{_md(name)}`: no longer a source")
    return "\n".join(lines) + "\n"


def mermaid_block(lineage: Lineage) -> str:
    return "```mermaid\n" + lineage.to_mermaid().rstrip("\n") + "\n```\n"


def mermaid_lineage(sources: Iterable[Source], target: str, *, revision: str | None = None) -> str:
    """A ```mermaid graph of the merge's direct parents pointing at the output."""
    return mermaid_block(direct_lineage(target, [(s.name, s.revision, s.is_hub, s.role) for s in sources],
                                        revision=revision))


def lineage_block(sources: list[Source], target: str, *, revision: str | None = None, hub=None,
                  from_hub: bool = False) -> str:
    """The family tree walked through the cards on the Hub (with ``from_hub``), else the merge's direct
    parents; either as a ```mermaid block."""
    if from_hub:
        try:
            return mermaid_block(lineage_walk.lineage_of(target, hub=hub, depth=3, max_calls=24))
        except Exception as exc:  # the walk is best effort: reporting never fails a command
            logger.debug("lineage from the Hub unavailable (%s); showing the direct parents", exc)
    return mermaid_lineage(sources, target, revision=revision)


def sources_of_plan(plan) -> list[Source]:
    base = getattr(plan.spec, "base_model", None)
    out = []
    for m in getattr(plan, "models", None) or plan.sources:  # a merge plan, or a tool job's plan
        role = "base" if base is not None and m.ref == base else "model"
        out.append(Source(m.name, m.revision, bool(m.is_hub), role))
    return out


def pins_of_card(readme: str | None) -> dict[str, str | None] | None:
    """{repo id: pinned SHA} recorded by a hubmerge card (None when there is no hubmerge card)."""

    block = recorded_block(readme)
    recipe = block.get("recipe")
    if not isinstance(recipe, dict):
        return None
    pins: dict[str, str | None] = {}

    def collect(ref):
        pins.setdefault(ref.path, ref.revision)
        return ref

    map_model_refs(recipe, collect)
    return pins


# -- per command -------------------------------------------------------------------------------


def before_push(hub, spec, repo_override: str | None) -> dict[str, str | None] | None:
    """The pins of the target's current card, read before pushing (only when a summary is wanted)."""
    if not os.environ.get(SUMMARY_ENV):
        return None
    try:
        repo_id = target_of(spec, repo_override)
        sha = hub.resolve(repo_id)
        return pins_of_card(hub.readme(repo_id, sha))
    except Exception as exc:  # a missing repo is the usual case; never fail the push for a summary
        logger.debug("no previous card for the summary: %s", exc)
        return None


def after_push(result, previous: dict[str, str | None] | None, *, endpoint: str | None = None, hub=None) -> None:
    """Outputs and summary of ``hubmerge push``."""
    if not enabled():
        return
    try:
        write_outputs({"changed": result.changed, "commit-url": result.commit_url or "",
                       "revision": result.commit_sha or "", "pr-url": result.pr_url or ""})
        if not os.environ.get(SUMMARY_ENV):
            return
        sources = sources_of_plan(result.merge.plan) if result.merge is not None else []
        repo_link = f"[{_md(result.repo_id)}]({endpoint}/{result.repo_id})" if endpoint else f"`{result.repo_id}`"
        parts = [f"## hubmerge push: {repo_link}", ""]
        if result.pr_url:
            parts.append(f"Opened a pull request: {result.pr_url}")
        elif result.changed:
            parts.append(f"Pushed commit [`{_short(result.commit_sha)}`]({result.commit_url})")
        else:
            parts.append(f"Up to date at `{_short(result.commit_sha)}`: same weights and recipe, no commit made.")
        parts += ["", f"Content hash: `{result.content_hash}`", "", "### Sources", "",
                  sources_table(sources, endpoint=endpoint, previous=previous),
                  changes_section(sources, previous, target=result.repo_id, endpoint=endpoint),
                  "### Lineage", "",
                  lineage_block(sources, result.repo_id, hub=hub, from_hub=hub is not None and not result.pr_url,
                                revision=result.commit_sha if result.changed and not result.pr_url else None)]
        append_summary("\n".join(parts))
    except Exception as exc:
        logger.warning("could not write CI outputs: %s", exc)


def after_validate(spec, plan) -> None:
    """Summary of ``hubmerge validate`` (a dry run: the plan, nothing pushed)."""
    if not os.environ.get(SUMMARY_ENV):
        return
    try:
        sources = sources_of_plan(plan)
        target = spec.hubmerge.target or "merged model"
        parts = [f"## hubmerge validate: `{_md(spec.merge_method)}` merge of {len(sources)} models", "",
                 f"Dry run: {len(plan.tensors)} output tensors, {plan.num_layers} layers; nothing was pushed.",
                 "", "### Sources", "", sources_table(sources), "### Lineage", "", mermaid_lineage(sources, target)]
        append_summary("\n".join(parts))
    except Exception as exc:
        logger.warning("could not write the job summary: %s", exc)


# -- check / sync (reports from hubmerge.hub.watch, read by attribute) ---------------------------


def _report_sources(report) -> list[Source]:
    base = report.recipe.get("base_model") if isinstance(getattr(report, "recipe", None), dict) else None
    base_path = None
    if isinstance(base, str):
        base_path = parse_ref(base).path
    elif isinstance(base, dict):
        base_path = base.get("path")
    return [Source(s.source, s.current, True, "base" if s.source == base_path else "model") for s in report.sources]


def _status_table(report, endpoint: str | None) -> str:
    rows = ["| Source | Tracks | Recorded | Current | Changed |", "|---|---|---|---|---|"]
    for s in report.sources:
        src = Source(s.source, s.current, True)
        rows.append(f"| {_md(s.source)} | {_md(s.tracks or '(pinned)')} | {_sha_link(endpoint, src, s.recorded)} | "
                    f"{_sha_link(endpoint, src, s.current)} | {'**yes**' if s.changed else 'no'} |")
    return "\n".join(rows) + "\n"


def _watch_summary(title: str, report, status: str, endpoint: str | None, revision: str | None,
                   from_hub: bool = True) -> str:
    sources = _report_sources(report)
    previous = {s.source: s.recorded for s in report.sources}
    return "\n".join([title, "", status, "", "### Sources", "", _status_table(report, endpoint),
                      changes_section(sources, previous, target=report.target, endpoint=endpoint),
                      "### Lineage", "", lineage_block(sources, report.target, revision=revision,
                                                       hub=_hub_for(endpoint) if from_hub else None,
                                                       from_hub=from_hub)])


def _hub_for(endpoint: str | None):
    try:
        return Hub(endpoint=endpoint)
    except Exception:  # pragma: no cover - the lineage walk then falls back to the direct parents
        return None


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or default_endpoint()).rstrip("/")


def after_check(report, *, endpoint: str | None = None) -> None:
    """Outputs and summary of ``hubmerge check``: ``stale``, ``revision`` (the head checked), ``changed=false``."""
    if not enabled():
        return
    try:
        endpoint = _endpoint(endpoint)
        write_outputs({"stale": report.stale, "changed": False, "revision": report.revision,
                       "commit-url": "", "pr-url": ""})
        state = "**stale**: upstream moved, a sync would re-merge" if report.stale else "up to date"
        append_summary(_watch_summary(f"## hubmerge check: `{_md(report.target)}`", report,
                                      f"`{report.target}` @ `{_short(report.revision)}` is {state}.", endpoint,
                                      report.revision))
    except Exception as exc:
        logger.warning("could not write CI outputs: %s", exc)


def after_sync(report, result, *, endpoint: str | None = None) -> None:
    """Outputs and summary of ``hubmerge sync`` (``result`` is None when nothing was stale)."""
    if not enabled():
        return
    try:
        endpoint = _endpoint(endpoint)
        changed = bool(result is not None and result.changed)
        revision = (result.commit_sha if result is not None and result.commit_sha else None) or report.revision
        write_outputs({"changed": changed, "stale": report.stale,
                       "commit-url": (result.commit_url if result is not None else None) or "",
                       "revision": revision, "pr-url": (result.pr_url if result is not None else None) or ""})
        if result is None:
            status = f"Up to date at `{_short(report.revision)}`: no upstream moved, nothing to do."
        elif result.pr_url:
            status = f"Re-merged; opened a pull request: {result.pr_url}"
        elif result.changed:
            status = f"Re-merged and pushed commit [`{_short(result.commit_sha)}`]({result.commit_url})"
        else:
            status = "Re-merged: identical weights and recipe, no commit made."
        append_summary(_watch_summary(f"## hubmerge sync: `{_md(report.target)}`", report, status, endpoint,
                                      revision if changed and not (result and result.pr_url) else report.revision,
                                      from_hub=not (result is not None and result.pr_url)))
    except Exception as exc:
        logger.warning("could not write CI outputs: %s", exc)
