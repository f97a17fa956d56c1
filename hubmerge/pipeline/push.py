"""``hubmerge push``: merge and publish as one atomic commit (or a Hub pull request).

Order of operations, each step failing before anything is written to the repo:
create the repo if needed, check write access, note the branch head, merge while pre-uploading each
shard as soon as it is written (and deleting it locally, so disk holds at most a couple of shards),
then one ``create_commit`` guarded by ``parent_commit``. Identical output means no commit.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hubmerge.errors import SpecError
from hubmerge.hub.client import Hub, ShardUploader, folder_files, stale_weight_files
from hubmerge.hub.errors import changed_since_start
from hubmerge.pipeline.card import write_card
from hubmerge.pipeline.run import MergeOptions, MergeResult, run_merge
from hubmerge.pipeline.tools import ToolRun, describe, run_tool
from hubmerge.spec.frontmatter import recorded_block
from hubmerge.spec.model import MergeSpec
from hubmerge.spec.tools import is_tool_spec

logger = logging.getLogger(__name__)


@dataclass
class PushResult:
    repo_id: str
    changed: bool
    commit_sha: str | None
    commit_url: str | None
    pr_url: str | None
    content_hash: str
    merge: MergeResult | None


def target_of(spec: MergeSpec, override: str | None) -> str:
    target = override or spec.hubmerge.target
    if not target:
        raise SpecError("no target repo to push to", path="hubmerge.target",
                        hint="add 'hubmerge: {target: your-name/model-name}' to the spec or pass --repo")
    return target


def push(spec: MergeSpec, *, hub: Hub, repo_id: str | None = None, private: bool | None = None,
         create_pr: bool | None = None, device: str = "cpu", max_shard_size: int | None = None,
         commit_message: str | None = None, base_dir: Path | None = None, show_progress: bool = True,
         workdir: Path | None = None, parent: str | None = None,
         gate: Callable[[Path], None] | None = None, decorate: Callable[[Path], None] | None = None,
         allow_pickle: bool = False) -> PushResult:
    """``parent``: the commit the caller decided from (sync passes the head it checked), so a push that
    raced with another fails instead of committing on top of it.

    ``decorate(folder)``: adds files to the merged folder before the commit (``hubmerge evolve`` puts its
    search record in the card). ``gate(folder)``: a pre-push check that raises to refuse the merge; with a
    gate, shards are not pre-uploaded but kept in the temporary folder, so the gate sees the complete model
    and a refused merge uploads nothing; the commit then uploads them."""
    repo_id = target_of(spec, repo_id)
    private = spec.hubmerge.private if private is None else private
    create_pr = spec.hubmerge.create_pr if create_pr is None else create_pr
    head = hub.ensure_writable_repo(repo_id, private=private)
    if parent is not None and parent != head:
        raise changed_since_start(f"committing to {repo_id}")
    parent = head
    old_readme = hub.readme(repo_id, parent)
    old_files = {f.path for f in hub.list_files(repo_id, parent)} if parent else set()
    with tempfile.TemporaryDirectory(prefix="hubmerge-push-", dir=workdir) as tmp:
        out = Path(tmp) / "out"
        # Each shard uploads while the next one is merged. With a gate, the shards stay in the folder until
        # it passes; the commit uploads them.
        uploader = (ShardUploader(hub, repo_id, staging=Path(tmp) / "uploading", create_pr=create_pr)
                    if gate is None else None)
        with uploader or nullcontext():
            if is_tool_spec(spec):  # an extract_lora / tokensurgeon recipe
                run = ToolRun(device=device, base_dir=base_dir, show_progress=show_progress,
                              allow_pickle=allow_pickle, max_shard_size=max_shard_size, on_shard=uploader,
                              title=repo_id.split("/")[-1], repo_id=repo_id, existing_card=old_readme)
                result = run_tool(spec, out, run, hub=hub)
            else:
                options = MergeOptions(device=device, max_shard_size=max_shard_size, base_dir=base_dir,
                                       show_progress=show_progress, on_shard=uploader, allow_pickle=allow_pickle)
                result = run_merge(spec, out, options, hub=hub, card_writer=lambda plan, digest, folder: write_card(
                    plan, digest, folder, title=repo_id.split("/")[-1], existing=old_readme, device=device,
                    repo_id=repo_id, hub=hub))
            if uploader is not None:
                uploader.wait()

        if decorate is not None:
            decorate(out)
        old_block = recorded_block(old_readme)
        new_block = recorded_block(result.card)
        same_weights = old_block.get("content_hash") == result.content_hash
        same_recipe = old_block.get("recipe") == new_block.get("recipe")
        if parent is not None and same_weights and same_recipe:
            logger.debug("%s is up to date (content hash %s); nothing to commit", repo_id, result.content_hash)
            return PushResult(repo_id, False, parent, None, None, result.content_hash, result)

        if gate is not None:
            gate(out)  # raises to refuse: nothing is committed
        uploaded = uploader.uploaded if uploader is not None else []
        files = folder_files(out)
        label = f"{spec.tool} job" if is_tool_spec(spec) else f"{spec.merge_method} merge"
        message = commit_message or f"hubmerge: {label} ({result.content_hash[7:19]})"
        title, _, details = message.partition("\n")
        description = (details.strip() + "\n\n" if details.strip() else "") + _description(result)
        info = hub.commit(repo_id, uploaded=uploaded, add=files,
                          delete=stale_weight_files(old_files, {op.path_in_repo for op in uploaded} | set(files)),
                          message=title, description=description, parent=parent, create_pr=create_pr)
    logger.debug("pushed %s: %s", repo_id, info.pr_url or info.commit_url)  # the CLI prints it
    return PushResult(repo_id, True, info.oid, info.commit_url, info.pr_url, result.content_hash, result)


def _description(result: MergeResult) -> str:
    if not isinstance(result, MergeResult):  # a tool's output
        return describe(result)
    lines = [f"Merged with hubmerge ({result.plan.method.name}).", "", "Sources:"]
    for m in result.plan.models:
        lines.append(f"- {m.name}" + (f"@{m.revision}" if m.revision else ""))
    lines.append("")
    lines.append(f"Content hash: {result.content_hash}")
    return "\n".join(lines)
