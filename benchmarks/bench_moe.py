"""Side-by-side benchmark: mergekit-moe vs hubmerge moe on the same recipes, same machine, same run.

Generates a dense Llama-shaped base and eight fine-tunes of it (default: TinyLlama's width with 12 layers,
1.3 GB each in bf16), then for 2, 4 and 8 experts builds a Mixtral MoE with ``gate_mode: hidden`` (the
base run on every expert's prompts) with each tool, alternately, as whole processes, and prints wall time,
peak RSS and their ratios. mergekit-moe loads the whole base for the hidden states and buffers output
shards in memory, so its peak grows with the experts; hubmerge streams the base layer by layer and every
tensor part by part, so its peak should stay flat.

    python benchmarks/bench_moe.py                      # the default run (~15 minutes, 20 GB of disk)
    python benchmarks/bench_moe.py --preset tiny --runs 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import _fmt_gib, _fmt_s, _ratio, measure  # noqa: E402

PRESETS = {
    # TinyLlama's width (hidden 2048, intermediate 5632, 32 heads / 4 kv heads, vocab 32000), 12 layers: 1.3 GB
    "default": dict(vocab=32000, hidden=2048, intermediate=5632, layers=12, heads=32, kv_heads=4),
    "small": dict(vocab=32000, hidden=1024, intermediate=2816, layers=16, heads=16, kv_heads=4),
    "tiny": dict(vocab=256, hidden=128, intermediate=256, layers=4, heads=4, kv_heads=2),
}
EXPERTS = ("e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8")


def make_models(root: Path, preset: str) -> None:
    from hubmerge.demo import TinyShape, make_family

    if (root / EXPERTS[-1] / "config.json").exists():
        return
    make_family(root, TinyShape(arch="llama", **PRESETS[preset]), names=("base", *EXPERTS), dtype="bfloat16")


def recipe(n: int) -> str:
    lines = ["base_model: base", "gate_mode: hidden", "dtype: bfloat16", "experts:"]
    for k, name in enumerate(EXPERTS[:n]):
        words = " ".join(f"w{10 * k + j}" for j in range(1, 7))
        lines += [f"  - source_model: {name}", f"    positive_prompts: [\"{words}\", \"w{k + 100} {words}\"]",
                  f"    negative_prompts: [\"w{k + 200}\"]"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--experts", default="2,4,8")
    ap.add_argument("--workdir", default=None, help="where models and outputs go (default: a temp folder)")
    ap.add_argument("--skip-mergekit", action="store_true")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hubmerge-bench-moe-"))
    models = work / "models"
    print(f"generating models ({args.preset}) in {models} ...", flush=True)
    make_models(models, args.preset)
    for f in models.glob("*/*.safetensors"):  # warm the page cache, as both tools will find it
        f.read_bytes()
    size = sum(f.stat().st_size for f in (models / "base").glob("*.safetensors"))
    print(f"each model: {size / 1e9:.2f} GB", flush=True)

    mergekit_cmd = [sys.executable, "-m", "mergekit.scripts.moe"]
    hubmerge_cmd = [sys.executable, "-m", "hubmerge.cli", "moe"]
    rows = []
    for n in (int(x) for x in args.experts.split(",")):
        spec = models / f"moe-{n}.yml"
        spec.write_text(recipe(n))
        results: dict[str, list[dict]] = {"mergekit": [], "hubmerge": []}
        for _ in range(args.runs):
            for tool in ("mergekit", "hubmerge"):
                if tool == "mergekit" and args.skip_mergekit:
                    continue
                out = work / f"out-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = (mergekit_cmd + [str(spec), str(out)] if tool == "mergekit"
                       else hubmerge_cmd + [str(spec), "-o", str(out), "-q"])
                results[tool].append(measure(cmd, models))
                out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        shutil.rmtree(work / "out-mergekit", ignore_errors=True)
        shutil.rmtree(work / "out-hubmerge", ignore_errors=True)
        row = {"experts": n, "output_gb": round(out_bytes / 1e9, 2)}
        for tool, found in results.items():
            if found:
                row[f"{tool}_s"] = statistics.median(r["wall"] for r in found)
                row[f"{tool}_rss"] = statistics.median(r["rss"] for r in found)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print()
    print("| experts | output | hubmerge wall | mergekit-moe wall | wall ratio | hubmerge peak RSS | "
          "mergekit-moe peak RSS | RSS ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [str(r["experts"]), f"{r['output_gb']:.2f} GB", _fmt_s(r.get("hubmerge_s")), _fmt_s(r.get("mergekit_s")),
                 _ratio(r.get("hubmerge_s"), r.get("mergekit_s")), _fmt_gib(r.get("hubmerge_rss")),
                 _fmt_gib(r.get("mergekit_rss")), _ratio(r.get("hubmerge_rss"), r.get("mergekit_rss"))]
        print("| " + " | ".join(cells) + " |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
