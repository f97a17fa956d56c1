"""``hubmerge evolve`` and ``eval``: searching merge parameters, and scoring a model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hubmerge.commands.common import hub_of, merge_only
from hubmerge.spec import load_spec, parse_size


def jsonl_options(args):
    from hubmerge.evolve.evaluate import JsonlOptions

    return JsonlOptions(max_new_tokens=args.max_new_tokens, answer_regex=args.answer_regex,
                        chat_template=args.chat_template, fewshot=args.fewshot)


def cmd_evolve(args) -> int:
    from hubmerge.evolve.report import push_best, write_outputs
    from hubmerge.evolve.search import EvolveOptions, run_search
    from hubmerge.spec.yamlio import dump_yaml

    spec_path = Path(args.spec)
    spec = load_spec(spec_path)
    merge_only(spec, "hubmerge evolve")
    stem = spec_path.stem
    out = Path(args.output or f"evolved-{stem}")
    storage = args.storage or f"sqlite:///{out.resolve().parent / (out.name + '-study.db')}"
    options = EvolveOptions(evals=args.evals, trials=args.trials, sampler=args.sampler, storage=storage,
                            study_name=args.study_name or f"evolve-{stem}", objectives=args.objectives,
                            anchors=args.anchors, final_top=args.final_top, seed=args.seed, device=args.device,
                            eval_dtype=args.eval_dtype, batch_size=args.batch_size,
                            base_dir=spec_path.resolve().parent, cache_limit=parse_size(args.in_memory_limit,
                                                                                        "--in-memory-limit"),
                            jsonl=jsonl_options(args), estimator=args.estimator,
                            anchor_selection=args.anchor_selection, irt_warmup=args.irt_warmup)
    hub = hub_of(args)
    if args.push:
        from hubmerge.pipeline.push import target_of

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
    evals = [parse_eval(e, jsonl=jsonl_options(args)) for e in args.evals]
    results = evaluate_target(target if target.is_dir() else args.target, evals, hub=hub_of(args),
                              anchors=args.anchors, seed=args.seed, device=args.device, dtype=args.eval_dtype,
                              batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"target": args.target, "results": [{"eval": ev.spec, "metric": ev.metric, **est.to_json()}
                                                             for ev, est in zip(evals, results)]}, indent=2))
    else:
        for ev, est in zip(evals, results):
            print(f"{ev.label}: {ev.metric} {est.describe()}")
    return 0

