"""One merge across many machines: the output shards are split into N parts balanced by bytes; each
machine merges its part and commits its shards into one Hub pull request; ``finalize`` checks every
shard against what its part recorded, adds index, config, tokenizer and card, and merges the pull
request, so ``main`` changes in one step.

The pull request carries ``.hubmerge/recipe.json`` (the recipe with every source pinned, written when
the PR is opened) so that every part merges exactly the same inputs, whatever moves upstream meanwhile,
and one ``.hubmerge/part-I-of-N.json`` per part (its shards' SHA-256 and tensor digests).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubmerge.errors import HubError, SpecError
from hubmerge.hub.client import Hub, ShardUploader, folder_files, stale_weight_files
from hubmerge.output.shards import DEFAULT_MAX_SHARD_SIZE, Shard, content_hash
from hubmerge.pipeline.card import write_card
from hubmerge.pipeline.push import target_of
from hubmerge.pipeline.run import MergeOptions, finalize_folder, plan_fingerprint, plan_spec, run_merge, shard_layout
from hubmerge.spec.model import MergeSpec
from hubmerge.spec.parse import spec_from_dict
from hubmerge.spec.pin import pinned_document

logger = logging.getLogger(__name__)

STATE_DIR = ".hubmerge"
RECIPE_FILE = f"{STATE_DIR}/recipe.json"


def part_file(i: int, n: int) -> str:
    return f"{STATE_DIR}/part-{i}-of-{n}.json"


def parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SpecError(f"--part {text!r} must look like 1/3", path="--part") from None
    if not 1 <= i <= n:
        raise SpecError(f"--part {text}: the part number must be between 1 and {n}", path="--part")
    return i, n


def partition(shards: list[Shard], parts: int) -> list[list[Shard]]:
    """Deterministic, balanced by bytes: largest shard first onto the lightest part (ties: lowest index)."""
    if parts < 1:
        raise SpecError("--parts must be at least 1", path="--parts")
    buckets: list[list[Shard]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for shard in sorted(shards, key=lambda s: (-s.data_bytes, s.filename)):
        k = min(range(parts), key=lambda j: (loads[j], j))
        buckets[k].append(shard)
        loads[k] += shard.data_bytes
    return [sorted(b, key=lambda s: s.filename) for b in buckets]


def plan_parts(spec: MergeSpec, parts: int, *, hub: Hub | None = None, max_shard_size: int | None = None,
               base_dir: Path | None = None) -> dict[str, Any]:
    plan = plan_spec(spec, base_dir=base_dir, hub=hub)
    try:
        shards = shard_layout(plan, max_shard_size or spec.hubmerge.max_shard_size or DEFAULT_MAX_SHARD_SIZE)
        return {"parts": [{"part": f"{k + 1}/{parts}", "bytes": sum(s.data_bytes for s in b),
                           "shards": [s.filename for s in b]} for k, b in enumerate(partition(shards, parts))],
                "shards": len(shards), "output_bytes": plan.total_bytes}
    finally:
        for m in plan.models:
            m.close()


@dataclass
class PullRequestState:
    number: int
    revision: str  # refs/pr/N
    files: dict[str, str | None]  # path -> LFS sha256 (None for regular files)


def pr_state(hub: Hub, repo_id: str, number: int) -> PullRequestState:
    revision = f"refs/pr/{number}"
    files = hub.list_files(repo_id, revision, what=f"{repo_id} pull request #{number}")
    return PullRequestState(number, revision, {f.path: f.lfs_sha256 for f in files})


def open_pr(spec: MergeSpec, *, hub: Hub, repo_id: str | None = None, private: bool | None = None,
            max_shard_size: int | None = None) -> int:
    """Create the pull request the parts will fill; pins every source once, for all parts."""
    repo_id = target_of(spec, repo_id)
    hub.ensure_writable_repo(repo_id, private=spec.hubmerge.private if private is None else private)
    refs = [r for ref in spec.referenced_models() for r in (ref, ref.lora) if r is not None]  # adapters too
    pins = {r.path: hub.resolve(r.path, r.revision) for r in refs if not Path(r.path).exists()}
    recipe = pinned_document(spec.raw, pins)
    state = {"recipe": recipe,
             "max_shard_size": max_shard_size or spec.hubmerge.max_shard_size or DEFAULT_MAX_SHARD_SIZE}
    number = hub.open_pull_request(repo_id, title=f"hubmerge: {spec.merge_method} merge (in parts)",
                                   description="Opened by `hubmerge push --open-pr`; parts commit their shards here, "
                                               "`hubmerge finalize` merges it.")
    hub.commit(repo_id, add={RECIPE_FILE: json.dumps(state, indent=2).encode()},
               message="hubmerge: pinned recipe for the parts", revision=f"refs/pr/{number}",
               what=f"opening a pull request on {repo_id}")
    logger.info("opened pull request #%d on %s", number, repo_id)
    return number


def _pr_spec(hub: Hub, repo_id: str, number: int) -> tuple[MergeSpec, int]:
    state = hub.read_json(repo_id, f"refs/pr/{number}", RECIPE_FILE)
    if state is None:
        raise HubError(f"{repo_id} pull request #{number} has no {RECIPE_FILE}", kind=HubError.NOT_FOUND,
                       missing="file", hint="open the pull request with 'hubmerge push SPEC --open-pr'")
    return spec_from_dict(state["recipe"], source=f"{repo_id}#{number} {RECIPE_FILE}"), int(state["max_shard_size"])


def push_part(spec: MergeSpec, part: str, number: int, *, hub: Hub, repo_id: str | None = None,
              device: str = "cpu", base_dir: Path | None = None, show_progress: bool = True) -> bool:
    """Merge one part and commit its shards into the pull request. Returns False when it was already there."""
    i, n = parse_part(part)
    repo_id = target_of(spec, repo_id)
    pinned, max_shard = _pr_spec(hub, repo_id, number)
    plan = plan_spec(pinned, base_dir=base_dir, hub=hub)
    try:
        shards = shard_layout(plan, max_shard)
        fingerprint = plan_fingerprint(plan, max_shard)
    finally:
        for m in plan.models:
            m.close()
    mine = partition(shards, n)[i - 1]
    state = pr_state(hub, repo_id, number)
    recorded = hub.read_json(repo_id, state.revision, part_file(i, n)) if part_file(i, n) in state.files else None
    if (recorded and recorded.get("fingerprint") == fingerprint
            and all(state.files.get(name) == sha for name, sha in recorded["shards"].items())
            and set(recorded["shards"]) == {s.filename for s in mine}):
        logger.info("part %d/%d is already in pull request #%d; nothing to do", i, n, number)
        return False
    with tempfile.TemporaryDirectory(prefix="hubmerge-part-") as tmp, ShardUploader(
            hub, repo_id, staging=Path(tmp) / "uploading", revision=state.revision,
            where=f"{repo_id}#{number}") as uploader:
        result = run_merge(pinned, Path(tmp) / "out", MergeOptions(
            device=device, max_shard_size=max_shard, base_dir=base_dir, show_progress=show_progress,
            on_shard=uploader, only_shards={s.filename for s in mine}), hub=hub)
        uploader.wait()
        oids = uploader.sha256()
        manifest = {"part": f"{i}/{n}", "fingerprint": fingerprint,
                    "shards": {s.filename: oids[s.filename] for s in mine},
                    "digests": {e.name: result.digests[e.name] for s in mine for e in s.entries}}
        hub.commit(repo_id, uploaded=uploader.uploaded, add={part_file(i, n): json.dumps(manifest, indent=1).encode()},
                   message=f"hubmerge: part {i}/{n}", revision=state.revision,
                   what=f"committing part {i}/{n} to {repo_id}#{number}")
    return True


def finalize(spec: MergeSpec, number: int, *, hub: Hub, repo_id: str | None = None, base_dir: Path | None = None,
             device: str = "cpu") -> str:
    """Check every part, complete the pull request and merge it. Returns the merge commit's URL."""
    repo_id = target_of(spec, repo_id)
    pinned, max_shard = _pr_spec(hub, repo_id, number)
    state = pr_state(hub, repo_id, number)
    plan = plan_spec(pinned, base_dir=base_dir, hub=hub)
    try:
        shards = shard_layout(plan, max_shard)
        fingerprint = plan_fingerprint(plan, max_shard)
        manifests = [path for path in state.files if path.startswith(f"{STATE_DIR}/part-")]
        digests: dict[str, str] = {}
        recorded_shards: dict[str, str] = {}
        for path in sorted(manifests):
            doc = hub.read_json(repo_id, state.revision, path) or {}
            if doc.get("fingerprint") != fingerprint:
                raise HubError(f"{path} was made from a different plan", hint="re-run that part")
            recorded_shards.update(doc.get("shards", {}))
            digests.update(doc.get("digests", {}))
        problems = []
        for shard in shards:
            want = recorded_shards.get(shard.filename)
            have = state.files.get(shard.filename)
            if want is None or have is None:
                problems.append(f"{shard.filename} is missing")
            elif want != have:
                problems.append(f"{shard.filename} does not match what its part wrote (sha256 {have[:12]} != {want[:12]})")
        missing_digests = [t.name for t in plan.tensors if t.name not in digests]
        if problems or missing_digests:
            detail = "; ".join(problems) or f"no digest for {missing_digests[:3]}"
            raise HubError(f"pull request #{number} is not complete: {detail}",
                           hint="re-run the parts that are missing or corrupted, then finalize again")
        digest = content_hash({k: bytes.fromhex(v) for k, v in digests.items()})
        with tempfile.TemporaryDirectory(prefix="hubmerge-finalize-") as tmp:
            folder = Path(tmp)
            finalize_folder(plan, folder, shards, digest)
            head = hub.main_head(repo_id)
            write_card(plan, digest, folder, title=repo_id.split("/")[-1], existing=hub.readme(repo_id, head),
                       device=device)
            files = folder_files(folder)
            main_files = {f.path for f in hub.list_files(repo_id, head)} if head else set()
            stale = stale_weight_files(main_files, {s.filename for s in shards} | set(files))
            what = f"finalizing {repo_id}#{number}"
            hub.commit(repo_id, add=files, delete=manifests + [RECIPE_FILE] + stale, message="hubmerge: finalize",
                       revision=state.revision, what=what)
            hub.merge_pull_request(repo_id, number, comment=f"hubmerge finalize: content hash {digest}", what=what)
            new_head = hub.resolve(repo_id)
    finally:
        for m in plan.models:
            m.close()
    logger.info("finalized %s#%d into main (%s)", repo_id, number, digest)
    return f"{hub.endpoint}/{repo_id}/commit/{new_head}"
