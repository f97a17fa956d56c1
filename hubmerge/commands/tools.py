"""``hubmerge extract-lora`` and ``hubmerge tokensurgeon``: a recipe from the options (or a recipe file),
run into a folder. The same recipe runs under ``merge``, ``push``, ``sync`` and ``reproduce``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hubmerge.commands.common import hub_of, shard_size
from hubmerge.errors import SpecError

logger = logging.getLogger("hubmerge")


def _recipe(args, tool: str, fields: dict[str, Any], required: tuple[str, ...]):
    """The spec: from the recipe file, or built from the command-line options (not both)."""
    from hubmerge.spec import load_spec, spec_from_dict
    from hubmerge.spec.tools import recipe_document

    given = [k for k, v in fields.items() if v not in (None, [], False)]
    if args.recipe:
        if given:
            raise SpecError(f"give either a recipe file or options like --{given[0].replace('_', '-')}, not both",
                            hint=f"put the settings into the recipe's '{tool}:' section")
        spec = load_spec(args.recipe)
        if getattr(spec, "tool", None) != tool:
            raise SpecError(f"{args.recipe} is not an '{tool}:' recipe",
                            hint=f"a {tool} recipe is a mapping with a '{tool}:' key")
        return spec, Path(args.recipe).resolve().parent
    missing = [k for k in required if not fields.get(k)]
    if missing:
        flag = {"base_model": "base"}.get(missing[0], missing[0])
        raise SpecError(f"--{flag} is required (or give a recipe file)", path=f"{tool}.{missing[0]}")
    return spec_from_dict(recipe_document(tool, fields), source="the command line"), Path.cwd()


def _run(args, spec, base_dir: Path):
    from hubmerge.pipeline.tools import ToolRun, run_tool

    run = ToolRun(device=args.device, overwrite=args.overwrite, base_dir=base_dir, show_progress=not args.quiet,
                  allow_pickle=args.allow_pickle, max_shard_size=shard_size(args))
    return run_tool(spec, args.output, run, hub=hub_of(args))


def cmd_extract_lora(args) -> int:
    fields = {"model": args.model, "base_model": args.base, "rank": args.rank, "sv_epsilon": args.sv_epsilon,
              "embed_lora": True if args.embed_lora else None, "save_modules": args.save_modules or [],
              "include": args.include or [], "exclude": args.exclude or [],
              "distribute_scale": False if args.no_distribute_scale else None, "dtype": args.dtype}
    spec, base_dir = _recipe(args, "extract_lora", fields, ("model", "base_model"))
    result = _run(args, spec, base_dir)
    stats = result.report.to_json()
    print(f"extracted {stats['lora_modules']} LoRA modules (largest rank {stats['max_rank']}) and "
          f"{stats['saved_in_full']} full tensors into {result.output} in {result.seconds:.1f} s")
    print(f"reconstruction error ‖delta - B@A‖_F / ‖delta‖_F = {stats['relative_error']:.4g}; "
          f"change from the base {stats['change_ratio']:.4g}")
    print(f"content hash: {result.content_hash}")
    return 0


def cmd_tokensurgeon(args) -> int:
    fields = {"model": args.model, "donor": args.donor, "method": args.method, "k": args.k,
              "subword_method": args.subword_method}
    spec, base_dir = _recipe(args, "tokensurgeon", fields, ("model", "donor"))
    result = _run(args, spec, base_dir)
    st = result.stats
    print(f"{result.output}: {st.rows} rows for the donor's tokenizer: {st.copied} copied, {st.approximated} "
          f"approximated ({st.method}), {st.zero} zero ({result.seconds:.1f} s)")
    print(f"content hash: {result.content_hash}")
    return 0
