"""``hubmerge merge``, ``moe``, ``validate`` and ``demo``: merges into a local folder, and the plan of one."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from hubmerge.commands import ci_outputs
from hubmerge.commands.common import hub_of, shard_size
from hubmerge.errors import SpecError
from hubmerge.output.shards import DEFAULT_MAX_SHARD_SIZE
from hubmerge.pipeline.card import write_card
from hubmerge.pipeline.run import MergeOptions, plan_spec, run_merge, shard_layout
from hubmerge.spec import format_size
from hubmerge.spec.moe import is_moe_spec
from hubmerge.spec.tools import is_tool_spec

logger = logging.getLogger("hubmerge")


def cmd_merge(args) -> int:
    from hubmerge.pipeline.stages import run_stages
    from hubmerge.spec.stages import load_stages

    stages = load_stages(args.spec)
    if is_tool_spec(stages[0].spec):  # an extract_lora / tokensurgeon recipe (never a multi-stage file)
        return _run_tool(args, stages[0].spec)
    options = MergeOptions(device=args.device, max_shard_size=shard_size(args), resume=args.resume,
                           overwrite=args.overwrite, base_dir=Path(args.spec).resolve().parent,
                           show_progress=not args.quiet, allow_pickle=args.allow_pickle,
                           protected=(Path(args.spec),))
    start = time.perf_counter()
    hub = hub_of(args)
    result = run_stages(stages, args.output, options, hub=hub, card_writer=lambda plan, digest, folder: write_card(
        plan, digest, folder, title=Path(args.output).name, device=args.device, hub=hub))
    logger.info("wrote %s: %d tensors, %d shard(s), %.1f s, %s", result.output, len(result.plan.tensors),
                len(result.shards), time.perf_counter() - start, result.content_hash)
    return 0


def _run_tool(args, spec) -> int:
    from hubmerge.pipeline.tools import ToolRun, run_tool

    run = ToolRun(device=args.device, overwrite=args.overwrite, base_dir=Path(args.spec).resolve().parent,
                  show_progress=not args.quiet, allow_pickle=args.allow_pickle, max_shard_size=shard_size(args),
                  protected=(Path(args.spec),))
    result = run_tool(spec, args.output, run, hub=hub_of(args))
    logger.info("wrote %s (%s): %.1f s, %s", result.output, spec.tool, result.seconds, result.content_hash)
    return 0


def cmd_moe(args) -> int:
    """Build the mixture of experts a mergekit-moe recipe describes (``hubmerge merge`` runs it too)."""
    from hubmerge.spec.stages import load_stages

    stages = load_stages(args.spec)
    if not is_moe_spec(stages[-1].spec):
        raise SpecError(f"{args.spec} is a merge spec, not an MoE recipe (it has no 'experts:')",
                        hint="run it with 'hubmerge merge'; an MoE recipe lists base_model and experts")
    return cmd_merge(args)


def cmd_validate(args) -> int:
    from hubmerge.spec.stages import load_stages

    stages = load_stages(args.spec)
    if is_tool_spec(stages[0].spec):
        from hubmerge.pipeline.tools import plan_summary

        summary = plan_summary(stages[0].spec, base_dir=Path(args.spec).resolve().parent, hub=hub_of(args),
                               allow_pickle=args.allow_pickle)
        print(json.dumps(summary, indent=2) if args.json else
              f"recipe ok: {summary.pop('tool')}: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
        return 0
    if len(stages) > 1:
        return _validate_stages(args, stages)
    spec = stages[0].spec
    if is_moe_spec(spec):
        from hubmerge.commands.moe import validate_moe

        return validate_moe(args, spec)
    from hubmerge.spec.parse import at_midpoints

    planned = at_midpoints(spec)
    if planned is not None:  # a spec for 'hubmerge evolve': check it as its candidates will be merged
        print("search spec: planned with every search range at its midpoint ('hubmerge evolve' finds the values)")
        spec = planned
    plan = plan_spec(spec, base_dir=Path(args.spec).resolve().parent, hub=hub_of(args), allow_pickle=args.allow_pickle)
    ci_outputs.after_validate(spec, plan)  # $GITHUB_STEP_SUMMARY on CI runners
    try:
        max_shard = shard_size(args) or spec.hubmerge.max_shard_size or DEFAULT_MAX_SHARD_SIZE
        shards = shard_layout(plan, max_shard)
        summary = {
            "merge_method": spec.merge_method,
            "models": [{"name": m.name, "revision": m.revision, **_adapter_json(m)} for m in plan.models],
            "layers": plan.num_layers,
            "modules": _modules_json(plan),
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
        _print_modules(plan)
        print(f"{len(plan.tensors)} output tensors, {format_size(plan.total_bytes)} in {len(shards)} shard(s); "
              f"reads {format_size(plan.input_bytes)}")
        width = max(len(t.name) for t in plan.tensors)
        starts = _module_starts(plan)
        for i, t in enumerate(plan.tensors):
            if i in starts:
                print(f" [{starts[i]}]")
            params = "copy" if t.copy else ", ".join(f"{k}={_fmt(v)}" for k, v in t.kwargs.items())
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
        plan = plan_spec(stage.spec, base_dir=base_dir, hub=hub_of(args), allow_pickle=args.allow_pickle)
        try:
            print(f"stage {stage.name}: {stage.spec.merge_method} of {len(plan.models)} models, "
                  f"{len(plan.tensors)} output tensors, {format_size(plan.total_bytes)}")
        finally:
            for m in plan.models:
                m.close()
    print(f"spec ok: {len(stages)} stages, run in this order: {' -> '.join(s.name for s in stages)}")
    return 0


def _modules_json(plan) -> list[dict]:
    return [{"name": m.name, "layers": m.num_layers, "source_layers": m.source_layers, "tensors": m.tensors,
             "layer_count_key": m.count_key, "copied_from": m.copied_from} for m in plan.modules]


def _print_modules(plan) -> None:
    """The modules found in the config source (name, layers, tensors) and what the plan makes of each."""
    layout = plan.layout
    how = f"rule for {layout.family}" if layout is not None and layout.family else "guessed from tensor names"
    print(f"modules ({how}):")
    width = max((len(m.name) for m in plan.modules), default=0)
    for m in plan.modules:
        layers = (f"{m.source_layers} layers" if m.num_layers == m.source_layers
                  else f"{m.source_layers} -> {m.num_layers} layers")
        key = f" ({m.count_key})" if m.count_key else ""
        note = f", copied from {m.copied_from}" if m.copied_from else ""
        print(f"  {m.name:<{width}}  {layers}{key}, {m.tensors} tensors{note}")
    for note in layout.notes if layout is not None else ():
        print(f"  note: {note}")


def _module_starts(plan) -> dict[int, str]:
    """Index of each module's first tensor in the plan (tensors are planned module by module)."""
    if len(plan.modules) < 2:
        return {}
    starts, at = {}, 0
    for m in plan.modules:
        if m.tensors:
            starts[at] = m.name
        at += m.tensors
    return starts


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


def cmd_demo(args) -> int:
    from importlib import resources

    from hubmerge.demo import make_family
    from hubmerge.spec.parse import parse_spec

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

