"""What each CLI command does, in terms of the library (kept apart from argument parsing)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from hubmerge import ci_outputs
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
    from hubmerge.merge.stages import run_stages
    from hubmerge.spec.stages import load_stages

    stages = load_stages(args.spec)
    options = MergeOptions(device=args.device, max_shard_size=_shard_size(args), resume=args.resume,
                           overwrite=args.overwrite, base_dir=Path(args.spec).resolve().parent,
                           show_progress=not args.quiet, allow_pickle=args.allow_pickle)
    start = time.perf_counter()
    hub = _hub(args)
    result = run_stages(stages, args.output, options, hub=hub, card_writer=lambda plan, digest, folder: write_card(
        plan, digest, folder, title=Path(args.output).name, device=args.device, hub=hub))
    logger.info("wrote %s: %d tensors, %d shard(s), %.1f s, %s", result.output, len(result.plan.tensors),
                len(result.shards), time.perf_counter() - start, result.content_hash)
    return 0


def cmd_validate(args) -> int:
    from hubmerge.spec.stages import load_stages

    stages = load_stages(args.spec)
    if len(stages) > 1:
        return _validate_stages(args, stages)
    spec = stages[0].spec
    from hubmerge.spec.search import at_midpoints

    planned = at_midpoints(spec)
    if planned is not None:  # a spec for 'hubmerge evolve': check it as its candidates will be merged
        print("search spec: planned with every search range at its midpoint ('hubmerge evolve' finds the values)")
        spec = planned
    plan = plan_spec(spec, base_dir=Path(args.spec).resolve().parent, hub=_hub(args), allow_pickle=args.allow_pickle)
    ci_outputs.after_validate(spec, plan)  # $GITHUB_STEP_SUMMARY on CI runners
    try:
        max_shard = _shard_size(args) or spec.hubmerge.max_shard_size or DEFAULT_MAX_SHARD_SIZE
        shards = shard_layout(plan, max_shard)
        summary = {
            "merge_method": spec.merge_method,
            "models": [{"name": m.name, "revision": m.revision, **_adapter_json(m)} for m in plan.models],
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
            print(f"  {m.name}" + (f" @ {m.revision}" if m.revision else "") + _adapter_text(m))
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


def _validate_stages(args, stages) -> int:
    """Plans every stage that reads only existing models; the others are planned when their inputs exist."""
    base_dir = Path(args.spec).resolve().parent
    for stage in stages:
        if stage.needs:
            print(f"stage {stage.name}: {stage.spec.merge_method} of the outputs of {', '.join(stage.needs)} "
                  "(planned when they have been merged)")
            continue
        plan = plan_spec(stage.spec, base_dir=base_dir, hub=_hub(args), allow_pickle=args.allow_pickle)
        try:
            print(f"stage {stage.name}: {stage.spec.merge_method} of {len(plan.models)} models, "
                  f"{len(plan.tensors)} output tensors, {_human(plan.total_bytes)}")
        finally:
            for m in plan.models:
                m.close()
    print(f"spec ok: {len(stages)} stages, run in this order: {' -> '.join(s.name for s in stages)}")
    return 0


def _adapter_json(model) -> dict:
    adapter = model.extra.get("adapter")
    return {"adapter": {"name": adapter.name, "revision": adapter.revision}} if adapter is not None else {}


def _adapter_text(model) -> str:
    adapter = model.extra.get("adapter")
    if adapter is None:
        return ""
    return f" + adapter {adapter.name}" + (f" @ {adapter.revision}" if adapter.revision else "")


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
    if args.open_pr or args.part:
        return _push_parts(args, hub, spec, base_dir)
    previous = ci_outputs.before_push(hub, spec, args.repo)  # CI runners only: the card's pins before pushing
    gate = _gate(args, spec, hub, base_dir)
    result = push(spec, hub=hub, repo_id=args.repo, private=args.private, create_pr=args.create_pr,
                  device=args.device, max_shard_size=_shard_size(args), commit_message=args.message,
                  base_dir=base_dir, show_progress=not args.quiet, gate=gate, allow_pickle=args.allow_pickle)
    ci_outputs.after_push(result, previous, endpoint=hub.endpoint, hub=hub)  # $GITHUB_OUTPUT, $GITHUB_STEP_SUMMARY
    if not result.changed:
        print(f"{result.repo_id} is up to date ({result.content_hash}); no commit made")
    else:
        print(f"pushed {result.repo_id}: {result.pr_url or result.commit_url}")
    return 0


def cmd_check(args) -> int:
    from hubmerge.hub.watch import EXIT_STALE, EXIT_UP_TO_DATE, check, render_table

    report = check(_hub(args), args.target)
    ci_outputs.after_check(report, endpoint=args.endpoint)  # $GITHUB_OUTPUT / $GITHUB_STEP_SUMMARY
    print(json.dumps(report.to_json(), indent=2) if args.json else render_table(report))
    return EXIT_STALE if report.stale else EXIT_UP_TO_DATE


def cmd_sync(args) -> int:
    from hubmerge.hub.watch import render_table, sync

    report, result = sync(_hub(args), args.target, create_pr=args.create_pr, device=args.device,
                          show_progress=not args.quiet)
    ci_outputs.after_sync(report, result, endpoint=args.endpoint)  # $GITHUB_OUTPUT / $GITHUB_STEP_SUMMARY
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


def _push_parts(args, hub, spec, base_dir) -> int:
    from hubmerge.errors import HubmergeError
    from hubmerge.hub.parts import open_pr, push_part

    if args.open_pr:
        number = open_pr(spec, hub=hub, repo_id=args.repo, private=args.private, max_shard_size=_shard_size(args))
        print(number)
        return 0
    if args.pr is None:
        raise HubmergeError("--part needs --pr NUM (the pull request opened with --open-pr)")
    changed = push_part(spec, args.part, args.pr, hub=hub, repo_id=args.repo, device=args.device, base_dir=base_dir,
                        show_progress=not args.quiet)
    print(f"part {args.part} {'committed to' if changed else 'already in'} pull request #{args.pr}")
    return 0


def cmd_plan(args) -> int:
    from hubmerge.hub.parts import plan_parts

    hub = _hub(args)
    spec, base_dir = _load(args, hub)
    doc = plan_parts(spec, args.parts, hub=hub, max_shard_size=_shard_size(args), base_dir=base_dir)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for part in doc["parts"]:
            print(f"part {part['part']}: {_human(part['bytes'])} in {len(part['shards'])} shard(s): "
                  + ", ".join(part["shards"]))
    return 0


def cmd_finalize(args) -> int:
    from hubmerge.hub.parts import finalize

    hub = _hub(args)
    spec, base_dir = _load(args, hub)
    url = finalize(spec, args.pr, hub=hub, repo_id=args.repo, base_dir=base_dir)
    print(f"finalized: {url}")
    return 0


def _gate(args, spec, hub, base_dir):
    """``push --gate-eval EVAL --max-ppl-ratio R``: a check push runs on the merge before its commit."""
    if not getattr(args, "gate_eval", None):
        return None
    from hubmerge.evolve.gate import ratio_gate

    return ratio_gate(args.gate_eval, spec, max_ratio=args.max_ppl_ratio, hub=hub, base_dir=base_dir,
                      device=args.device)


def cmd_evolve(args) -> int:
    from hubmerge.evolve.report import push_best, write_outputs
    from hubmerge.evolve.search import EvolveOptions, run_search
    from hubmerge.spec.yamlio import dump_yaml

    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    stem = spec_path.stem
    out = Path(args.output or f"evolved-{stem}")
    storage = args.storage or f"sqlite:///{out.resolve().parent / (out.name + '-study.db')}"
    options = EvolveOptions(evals=args.evals, trials=args.trials, sampler=args.sampler, storage=storage,
                            study_name=args.study_name or f"evolve-{stem}", objectives=args.objectives,
                            anchors=args.anchors, final_top=args.final_top, seed=args.seed, device=args.device,
                            eval_dtype=args.eval_dtype, batch_size=args.batch_size,
                            base_dir=spec_path.resolve().parent, cache_limit=parse_size(args.in_memory_limit,
                                                                                        "--in-memory-limit"))
    hub = _hub(args)
    if args.push:
        from hubmerge.hub.push import target_of

        target_of(spec, args.repo)  # no target: fail now, not after the search
    start = time.perf_counter()
    result = run_search(spec, options, hub=hub)
    merged = write_outputs(result, out, device=args.device, base_dir=options.base_dir, hub=hub,
                           show_progress=not args.quiet)
    best = result.best
    print(f"best of {len(result.complete)} trials (study {result.study_name!r} in {storage}): trial {best.number}")
    for ev, est in zip(result.evaluations, best.final):
        print(f"  {ev.label}: {est.describe()}")
    for name, value in best.values.items():
        print(f"  {name} = {value}")
    best_spec = Path(args.best_spec) if args.best_spec else spec_path.with_name(f"{stem}.evolved.yml")
    best_spec.write_text(dump_yaml(result.best_document), encoding="utf-8")
    print(f"wrote {merged.output} ({time.perf_counter() - start:.1f} s); the spec with these values: {best_spec}")
    if args.push:
        pushed = push_best(result, hub=hub, repo_id=args.repo, device=args.device, base_dir=options.base_dir,
                           show_progress=not args.quiet)
        print(f"pushed {pushed.repo_id}: {pushed.pr_url or pushed.commit_url}" if pushed.changed
              else f"{pushed.repo_id} is up to date; no commit made")
    return 0


def cmd_eval(args) -> int:
    from hubmerge.evolve.evaluate import parse_eval
    from hubmerge.evolve.gate import evaluate_target

    target = Path(args.target)
    evals = [parse_eval(e) for e in args.evals]
    results = evaluate_target(target if target.is_dir() else args.target, evals, hub=_hub(args),
                              anchors=args.anchors, seed=args.seed, device=args.device, dtype=args.eval_dtype,
                              batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"target": args.target, "results": [{"eval": ev.spec, "metric": ev.metric, **est.to_json()}
                                                             for ev, est in zip(evals, results)]}, indent=2))
    else:
        for ev, est in zip(evals, results):
            print(f"{ev.label}: {ev.metric} {est.describe()}")
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


def cmd_lineage(args) -> int:
    from hubmerge.output.lineage import lineage_of

    lineage = lineage_of(args.repo, hub=_hub(args), depth=args.depth, max_calls=args.max_calls)
    print(lineage.render(args.format), end="")
    return 0


def cmd_reproduce(args) -> int:
    from hubmerge.output.verify import reproduce

    result, recipe = reproduce(args.repo, args.output, hub=_hub(args), device=args.device, overwrite=args.overwrite,
                               max_shard_size=_shard_size(args), show_progress=not args.quiet,
                               allow_pickle=args.allow_pickle)
    print(f"reproduced {recipe.source.display} from its {recipe.kind} recipe into {result.output}")
    print(f"content hash: {result.content_hash}")
    recorded = recipe.recorded.get("content_hash")
    if isinstance(recorded, str):
        print("matches the content hash its card records" if recorded == result.content_hash
              else f"differs from the content hash its card records ({recorded}); run 'hubmerge verify' for details")
    return 0


def cmd_verify(args) -> int:
    from hubmerge.output.verify import verify

    check = verify(args.repo, hub=_hub(args), device=args.device, show_progress=not args.quiet,
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

    from hubmerge.output.verify import regenerate_card

    to_file = args.output not in (None, "-")
    card, written = regenerate_card(args.target, hub=_hub(args), title=args.title, repo_id=args.repo,
                                    write=args.output is None)
    if to_file:
        Path(args.output).write_text(card, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    elif written is not None:
        print(f"wrote {written}", file=sys.stderr)
    else:
        print(card, end="")
    return 0
