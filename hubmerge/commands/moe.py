"""The MoE side of ``hubmerge validate``: an MoE recipe's plan, from headers alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger("hubmerge")


def validate_moe(args, spec) -> int:
    """Plan an MoE from headers alone and print it (``--json``: as JSON)."""
    from hubmerge.commands import ci_outputs
    from hubmerge.commands.common import hub_of, shard_size
    from hubmerge.merge.moe.plan import plan_moe
    from hubmerge.output.shards import DEFAULT_MAX_SHARD_SIZE, ShardEntry, layout_shards
    from hubmerge.spec import format_size

    plan = plan_moe(spec, base_dir=Path(args.spec).resolve().parent, hub=hub_of(args),
                    allow_pickle=getattr(args, "allow_pickle", False))
    try:
        ci_outputs.after_validate(spec, plan)
        max_shard = shard_size(args) or spec.hubmerge.max_shard_size or DEFAULT_MAX_SHARD_SIZE
        shards = layout_shards([ShardEntry(t.name, t.dtype, t.shape) for t in plan.tensors], max_shard)
        experts = [{"model": plan.models[m].name, "revision": plan.models[m].revision, "shared": shared,
                    "positive_prompts": len(e.positive_prompts), "negative_prompts": len(e.negative_prompts)}
                   for shared, group, models in ((False, spec.experts, plan.experts), (True, spec.shared_experts, plan.shared))
                   for e, m in zip(group, models)]
        base = plan.models[plan.base]
        if args.json:
            print(json.dumps({
                "kind": "moe", "family": plan.family.id, "architecture": plan.family.architecture,
                "gate_mode": spec.gate_mode, "experts_per_token": spec.experts_per_token,
                "base": {"name": base.name, "revision": base.revision}, "experts": experts,
                "layers": plan.num_layers, "tensors": len(plan.tensors), "output_bytes": plan.total_bytes,
                "input_bytes": plan.input_bytes,
                "shards": [{"file": s.filename, "tensors": len(s.entries), "bytes": s.data_bytes} for s in shards],
                "plan": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "role": t.role,
                          "parts": [plan.models[p.others[0].model].name if p.others else p.kwargs["op"]
                                    for p in t.parts]} for t in plan.tensors],
            }, indent=2))
            return 0
        print(f"recipe ok: {plan.family.display} mixture of {len(spec.experts)} experts "
              f"({spec.experts_per_token} per token), {plan.num_layers} layers, gate_mode {spec.gate_mode}")
        print(f"  base      {base.name}" + (f" @ {base.revision}" if base.revision else ""))
        for i, e in enumerate(experts):
            label = "shared" if e["shared"] else f"expert {i}"
            print(f"  {label:<9} {e['model']}" + (f" @ {e['revision']}" if e["revision"] else "")
                  + f"  ({e['positive_prompts']} positive, {e['negative_prompts']} negative prompts)")
        print(f"{len(plan.tensors)} output tensors, {format_size(plan.total_bytes)} in {len(shards)} shard(s); "
              f"reads {format_size(plan.input_bytes)}")
        width = max(len(t.name) for t in plan.tensors)
        for t in plan.tensors:
            print(f"  {t.name:<{width}}  {str(list(t.shape)):<16} {t.dtype:<5} {t.role}"
                  + (f" ({len(t.parts)} parts)" if len(t.parts) > 1 else ""))
        return 0
    finally:
        for m in plan.models:
            m.close()
