"""What each CLI command does, in terms of the library (kept apart from argument parsing)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from hubmerge.merge.run import MergeOptions, plan_spec, run_merge, shard_layout
from hubmerge.output.card import write_card
from hubmerge.output.shards import DEFAULT_MAX_SHARD_SIZE
from hubmerge.spec import load_spec, parse_size

logger = logging.getLogger("hubmerge")


def _shard_size(args) -> int | None:
    return parse_size(args.max_shard_size, "--max-shard-size") if getattr(args, "max_shard_size", None) else None


def _hub(args):
    from hubmerge.hub import Hub

    return Hub(endpoint=getattr(args, "endpoint", None), download=getattr(args, "download", False))


def _load(args, hub=None):
    """A spec file, or (for push) a Hub repo id whose README front matter holds the recipe."""
    path = Path(args.spec)
    if path.exists() or hub is None or "/" not in args.spec or args.spec.endswith((".yml", ".yaml")):
        return load_spec(path), path.resolve().parent
    from hubmerge.hub.push import spec_from_repo

    return spec_from_repo(hub, args.spec), None


def cmd_merge(args) -> int:
    spec = load_spec(args.spec)
    options = MergeOptions(device=args.device, max_shard_size=_shard_size(args), resume=args.resume,
                           overwrite=args.overwrite, base_dir=Path(args.spec).resolve().parent,
                           show_progress=not args.quiet)
    start = time.perf_counter()
    result = run_merge(spec, args.output, options, hub=_hub(args), card_writer=lambda plan, digest, folder: write_card(
        plan, digest, folder, title=Path(args.output).name, device=args.device))
    logger.info("wrote %s: %d tensors, %d shard(s), %.1f s, %s", result.output, len(result.plan.tensors),
                len(result.shards), time.perf_counter() - start, result.content_hash)
    return 0


def cmd_validate(args) -> int:
    spec = load_spec(args.spec)
    plan = plan_spec(spec, base_dir=Path(args.spec).resolve().parent, hub=_hub(args))
    try:
        max_shard = _shard_size(args) or spec.hubmerge.max_shard_size or DEFAULT_MAX_SHARD_SIZE
        shards = shard_layout(plan, max_shard)
        summary = {
            "merge_method": spec.merge_method,
            "models": [{"name": m.name, "revision": m.revision} for m in plan.models],
            "layers": plan.num_layers,
            "tensors": len(plan.tensors),
            "output_bytes": plan.total_bytes,
            "input_bytes": plan.input_bytes,
            "shards": [{"file": s.filename, "tensors": len(s.entries), "bytes": s.data_bytes} for s in shards],
        }
        if args.json:
            summary["plan"] = [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                                "inputs": [plan.models[i.model].name for i in t.inputs],
                                "base": plan.models[t.base.model].name if t.base else None,
                                "params": t.kwargs} for t in plan.tensors]
            print(json.dumps(summary, indent=2, default=str))
            return 0
        print(f"spec ok: {spec.merge_method} of {len(plan.models)} models, {plan.num_layers} layers")
        for m in plan.models:
            print(f"  {m.name}" + (f" @ {m.revision}" if m.revision else ""))
        print(f"{len(plan.tensors)} output tensors, {_human(plan.total_bytes)} in {len(shards)} shard(s); "
              f"reads {_human(plan.input_bytes)}")
        width = max(len(t.name) for t in plan.tensors)
        for t in plan.tensors:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.kwargs.items())
            print(f"  {t.name:<{width}}  {str(list(t.shape)):<14} {t.dtype:<5} {params}")
        return 0
    finally:
        for m in plan.models:
            m.close()


def _fmt(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def cmd_push(args) -> int:
    from hubmerge.hub.push import push

    hub = _hub(args)
    spec, base_dir = _load(args, hub)
    result = push(spec, hub=hub, repo_id=args.repo, private=args.private, create_pr=args.create_pr,
                  device=args.device, max_shard_size=_shard_size(args), commit_message=args.message,
                  base_dir=base_dir, show_progress=not args.quiet)
    if not result.changed:
        print(f"{result.repo_id} is up to date ({result.content_hash}); no commit made")
    else:
        print(f"pushed {result.repo_id}: {result.pr_url or result.commit_url}")
    return 0


def cmd_check(args) -> int:
    from hubmerge.hub.watch import EXIT_STALE, EXIT_UP_TO_DATE, check, render_table

    report = check(_hub(args), args.target)
    print(json.dumps(report.to_json(), indent=2) if args.json else render_table(report))
    return EXIT_STALE if report.stale else EXIT_UP_TO_DATE


def cmd_sync(args) -> int:
    from hubmerge.hub.watch import render_table, sync

    report, result = sync(_hub(args), args.target, create_pr=args.create_pr, device=args.device,
                          show_progress=not args.quiet)
    print(render_table(report))
    if result is None:
        print(f"{args.target} is up to date; nothing to do")
    elif not result.changed:
        print(f"{args.target}: the re-merge gave identical weights; no commit made")
    else:
        print(f"re-merged {args.target}: {result.pr_url or result.commit_url}")
    return 0


def cmd_webhook_serve(args) -> int:
    import os

    from hubmerge.errors import HubmergeError
    from hubmerge.hub.watch import recorded_recipe, sync, tracked_refs
    from hubmerge.hub.webhook import WebhookReceiver, github_dispatch, make_server

    secret = os.environ.get(args.secret_env)
    if not secret:
        raise HubmergeError(f"no webhook secret: set the {args.secret_env} environment variable",
                            hint="use the same secret as in the Hub webhook settings")
    hub = _hub(args)

    def targets() -> dict[str, dict[str, str]]:
        out = {}
        for target in args.targets:
            try:
                out[target] = tracked_refs(recorded_recipe(hub, target)[1])
            except HubmergeError as exc:
                logger.warning("cannot read %s: %s", target, exc)
        return out

    if args.dispatch:
        token = os.environ.get("GITHUB_TOKEN")
        if not token:
            raise HubmergeError("--dispatch needs a GitHub token in GITHUB_TOKEN")
        trigger = github_dispatch(args.dispatch, token, api_url=args.github_api)
    else:
        def trigger(target, events):
            sync(hub, target, create_pr=args.create_pr, show_progress=False)

    receiver = WebhookReceiver(secret, targets, trigger, debounce=args.debounce)
    server = make_server(receiver, args.host, args.port)
    logger.info("listening for Hub webhooks on http://%s:%d (%d targets)", args.host, server.server_port,
                len(args.targets))
    try:
        server.serve_forever()
    finally:
        receiver.flush()
        server.server_close()
    return 0


def cmd_demo(args) -> int:
    from hubmerge.demo import make_family
    from hubmerge.spec.parse import parse_spec
    from importlib import resources

    root = Path(args.output).resolve()
    inputs = root / "inputs"
    if inputs.exists():
        shutil.rmtree(inputs)
    make_family(inputs)
    text = resources.files("hubmerge").joinpath("demo.yml").read_text()
    spec_path = root / "demo.yml"
    spec_path.write_text(text)
    spec = parse_spec(text, source=str(spec_path))
    out = root / "merged"
    options = MergeOptions(base_dir=root, overwrite=True, show_progress=not args.quiet)
    result = run_merge(spec, out, options, card_writer=lambda plan, digest, folder: write_card(
        plan, digest, folder, title="hubmerge-demo"))
    print(f"demo: merged {len(result.plan.models)} tiny models with {spec.merge_method} into {result.output}")
    print(f"      card: {result.output / 'README.md'}")
    print(f"      content hash: {result.content_hash}")
    return 0
