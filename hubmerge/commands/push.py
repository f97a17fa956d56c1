"""``hubmerge push``, ``plan`` and ``finalize``: merges published to the Hub, whole or in parts."""

from __future__ import annotations

import json

from hubmerge.commands import ci_outputs
from hubmerge.commands.common import hub_of, merge_only, shard_size, spec_or_repo
from hubmerge.errors import HubmergeError
from hubmerge.spec import format_size


def cmd_push(args) -> int:
    from hubmerge.pipeline.push import push

    hub = hub_of(args)
    spec, base_dir = spec_or_repo(args, hub)
    if args.open_pr or args.part or args.gate_eval:
        merge_only(spec, "--gate-eval" if args.gate_eval else "--open-pr / --part")
    if args.open_pr or args.part:
        return _push_parts(args, hub, spec, base_dir)
    previous = ci_outputs.before_push(hub, spec, args.repo)  # CI runners only: the card's pins before pushing
    gate = _gate(args, spec, hub, base_dir)
    result = push(spec, hub=hub, repo_id=args.repo, private=args.private, create_pr=args.create_pr,
                  device=args.device, max_shard_size=shard_size(args), commit_message=args.message,
                  base_dir=base_dir, show_progress=not args.quiet, gate=gate, allow_pickle=args.allow_pickle)
    ci_outputs.after_push(result, previous, endpoint=hub.endpoint, hub=hub)  # $GITHUB_OUTPUT, $GITHUB_STEP_SUMMARY
    if not result.changed:
        print(f"{result.repo_id} is up to date ({result.content_hash}); no commit made")
    else:
        print(f"pushed {result.repo_id}: {result.pr_url or result.commit_url}")
    return 0


def _push_parts(args, hub, spec, base_dir) -> int:
    from hubmerge.pipeline.parts import open_pr, push_part

    if args.open_pr:
        number = open_pr(spec, hub=hub, repo_id=args.repo, private=args.private, max_shard_size=shard_size(args))
        print(number)
        return 0
    if args.pr is None:
        raise HubmergeError("--part needs --pr NUM (the pull request opened with --open-pr)")
    changed = push_part(spec, args.part, args.pr, hub=hub, repo_id=args.repo, device=args.device, base_dir=base_dir,
                        show_progress=not args.quiet)
    print(f"part {args.part} {'committed to' if changed else 'already in'} pull request #{args.pr}")
    return 0


def _gate(args, spec, hub, base_dir):
    """``push --gate-eval EVAL --max-ppl-ratio R``: a check push runs on the merge before its commit."""
    if not getattr(args, "gate_eval", None):
        return None
    from hubmerge.evolve.gate import ratio_gate

    return ratio_gate(args.gate_eval, spec, max_ratio=args.max_ppl_ratio, hub=hub, base_dir=base_dir,
                      device=args.device)


def cmd_plan(args) -> int:
    from hubmerge.pipeline.parts import plan_parts

    hub = hub_of(args)
    spec, base_dir = spec_or_repo(args, hub)
    merge_only(spec, "hubmerge plan")
    doc = plan_parts(spec, args.parts, hub=hub, max_shard_size=shard_size(args), base_dir=base_dir)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for part in doc["parts"]:
            print(f"part {part['part']}: {format_size(part['bytes'])} in {len(part['shards'])} shard(s): "
                  + ", ".join(part["shards"]))
    return 0


def cmd_finalize(args) -> int:
    from hubmerge.pipeline.parts import finalize

    hub = hub_of(args)
    spec, base_dir = spec_or_repo(args, hub)
    merge_only(spec, "hubmerge finalize")
    url = finalize(spec, args.pr, hub=hub, repo_id=args.repo, base_dir=base_dir)
    print(f"finalized: {url}")
    return 0

