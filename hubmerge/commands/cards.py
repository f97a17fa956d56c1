"""``hubmerge lineage``, ``reproduce``, ``verify`` and ``card``: what a model's card records, used again."""

from __future__ import annotations

from pathlib import Path

from hubmerge.commands.common import hub_of, shard_size


def cmd_lineage(args) -> int:
    from hubmerge.hub.lineage import lineage_of

    lineage = lineage_of(args.repo, hub=hub_of(args), depth=args.depth, max_calls=args.max_calls)
    print(lineage.render(args.format), end="")
    return 0


def cmd_reproduce(args) -> int:
    from hubmerge.pipeline.verify import reproduce

    result, recipe = reproduce(args.repo, args.output, hub=hub_of(args), device=args.device, overwrite=args.overwrite,
                               max_shard_size=shard_size(args), show_progress=not args.quiet,
                               allow_pickle=args.allow_pickle)
    print(f"reproduced {recipe.source.display} from its {recipe.kind} recipe into {result.output}")
    print(f"content hash: {result.content_hash}")
    recorded = recipe.recorded.get("content_hash")
    if isinstance(recorded, str):
        print("matches the content hash its card records" if recorded == result.content_hash
              else f"differs from the content hash its card records ({recorded}); run 'hubmerge verify' for details")
    return 0


def cmd_verify(args) -> int:
    from hubmerge.pipeline.verify import verify

    check = verify(args.repo, hub=hub_of(args), device=args.device, show_progress=not args.quiet,
                   allow_pickle=args.allow_pickle)
    if check.ok:
        print(f"verified: {check.target}: a fresh merge of its recipe and its published tensors both match "
              f"the recorded content hash {check.recorded} ({check.tensors} tensors)")
        return 0
    print(f"NOT verified: {check.target}")
    for problem in check.problems():
        print(f"  {problem}")
    if check.differing:
        print(f"  {len(check.differing)} tensor(s) differ from a fresh merge:")
        for name in check.differing:
            print(f"    {name}")
    for label, names in (("missing from the repo", check.missing), ("not produced by the recipe", check.extra)):
        if names:
            print(f"  {len(names)} tensor(s) {label}: " + ", ".join(names))
    return 1


def cmd_card(args) -> int:
    import sys

    from hubmerge.pipeline.verify import regenerate_card

    to_file = args.output not in (None, "-")
    card, written = regenerate_card(args.target, hub=hub_of(args), title=args.title, repo_id=args.repo,
                                    write=args.output is None)
    if to_file:
        Path(args.output).write_text(card, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    elif written is not None:
        print(f"wrote {written}", file=sys.stderr)
    else:
        print(card, end="")
    return 0

