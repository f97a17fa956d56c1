"""``hubmerge push``: merge and publish as one atomic commit (or a Hub pull request).

Order of operations, each step failing before anything is written to the repo:
create the repo if needed, check write access, note the branch head, merge while pre-uploading each
shard as soon as it is written (and deleting it locally, so disk holds at most a couple of shards),
then one ``create_commit`` guarded by ``parent_commit``. Identical output means no commit.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hubmerge.errors import HubError, SpecError
from hubmerge.hub.client import Hub, hub_errors
from hubmerge.pipeline.card import write_card
from hubmerge.pipeline.run import MergeOptions, MergeResult, run_merge
from hubmerge.pipeline.tools import ToolRun, describe, run_tool
from hubmerge.spec.frontmatter import recorded_block
from hubmerge.spec.model import MergeSpec
from hubmerge.spec.tools import is_tool_spec

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
GENERATED_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


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
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    repo_id = target_of(spec, repo_id)
    private = spec.hubmerge.private if private is None else private
    create_pr = spec.hubmerge.create_pr if create_pr is None else create_pr
    with hub_errors(f"target {repo_id}"):
        hub.api.create_repo(repo_id, private=private, exist_ok=True)
        hub.api.auth_check(repo_id, write=True)
        refs = hub.api.list_repo_refs(repo_id)
    head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
    if parent is not None and parent != head:
        raise HubError(f"committing to {repo_id}: the repo changed since the merge started (another commit landed)",
                       hint="run again to merge on top of the new head, or use --create-pr")
    parent = head
    old_readme = hub.readme(repo_id, parent)
    old_files = set(hub.api.list_repo_files(repo_id, revision=parent)) if parent else set()

    uploaded: list = []

    def upload_shard(path: Path) -> None:
        if gate is not None:
            return  # kept until the gate passes; the commit uploads it
        op = CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
        with hub_errors(f"uploading {path.name} to {repo_id}"):
            hub.api.preupload_lfs_files(repo_id, additions=[op], create_pr=create_pr or None)
        path.unlink()  # uploaded: the disk holds only the shard being written
        uploaded.append(op)

    with tempfile.TemporaryDirectory(prefix="hubmerge-push-", dir=workdir) as tmp:
        out = Path(tmp) / "out"
        if is_tool_spec(spec):  # an extract_lora / tokensurgeon recipe
            run = ToolRun(device=device, base_dir=base_dir, show_progress=show_progress, allow_pickle=allow_pickle,
                          max_shard_size=max_shard_size, on_shard=upload_shard, title=repo_id.split("/")[-1],
                          repo_id=repo_id, existing_card=old_readme)
            result = run_tool(spec, out, run, hub=hub)
        else:
            options = MergeOptions(device=device, max_shard_size=max_shard_size, base_dir=base_dir,
                                   show_progress=show_progress, on_shard=upload_shard, allow_pickle=allow_pickle)
            result = run_merge(spec, out, options, hub=hub, card_writer=lambda plan, digest, folder: write_card(
                plan, digest, folder, title=repo_id.split("/")[-1], existing=old_readme, device=device,
                repo_id=repo_id, hub=hub))

        if decorate is not None:
            decorate(out)
        old_block = recorded_block(old_readme)
        new_block = recorded_block((out / "README.md").read_text(encoding="utf-8"))
        same_weights = old_block.get("content_hash") == result.content_hash
        same_recipe = old_block.get("recipe") == new_block.get("recipe")
        if parent is not None and same_weights and same_recipe:
            logger.info("%s is up to date (content hash %s); nothing to commit", repo_id, result.content_hash)
            return PushResult(repo_id, False, parent, None, None, result.content_hash, result)

        if gate is not None:
            gate(out)  # raises to refuse: nothing is committed
        operations: list = list(uploaded)
        for path in sorted(out.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                operations.append(CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)))
        new_names = {op.path_in_repo for op in operations}
        for stale in sorted(old_files - new_names):
            if stale.endswith(WEIGHT_SUFFIXES) or stale in GENERATED_FILES:
                operations.append(CommitOperationDelete(path_in_repo=stale))
        label = f"{spec.tool} job" if is_tool_spec(spec) else f"{spec.merge_method} merge"
        message = commit_message or f"hubmerge: {label} ({result.content_hash[7:19]})"
        title, _, details = message.partition("\n")
        description = (details.strip() + "\n\n" if details.strip() else "") + _description(result)
        with hub_errors(f"committing to {repo_id}"):
            info = hub.api.create_commit(repo_id, operations, commit_message=title,
                                         commit_description=description, parent_commit=parent,
                                         create_pr=create_pr or None)
    logger.info("pushed %s: %s", repo_id, info.pr_url or info.commit_url)
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
