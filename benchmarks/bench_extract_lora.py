"""Side-by-side benchmark: mergekit-extract-lora vs hubmerge extract-lora, same models, same machine, same run.

Generates a base and a fine-tune (every tensor changed, full rank, as a real fine-tune: the SVD of every
linear layer is the work), then runs the two tools alternately as whole processes, N times each, at the
same rank, and prints median wall time, peak RSS and their ratios, plus how much of the delta each
adapter keeps (the relative reconstruction error, which should agree).

    python benchmarks/bench_extract_lora.py                      # medium preset (~300M parameters, bf16)
    python benchmarks/bench_extract_lora.py --preset small --runs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import _fmt_gib, _fmt_s, _ratio, measure  # noqa: E402  (the same process harness)

PRESETS = {
    "medium": dict(vocab=32000, hidden=1024, intermediate=2816, layers=8, heads=16, kv_heads=4),
    "small": dict(vocab=8000, hidden=512, intermediate=1408, layers=8, heads=8, kv_heads=2),
    "tiny": dict(vocab=256, hidden=128, intermediate=256, layers=4, heads=4, kv_heads=2),
}


def make_models(root: Path, preset: str) -> None:
    from hubmerge.demo import TinyShape, make_family

    if not (root / "ft" / "config.json").exists():
        make_family(root, TinyShape(arch="llama", **PRESETS[preset]), names=("base", "ft"), dtype="bfloat16")


def reconstruction_errors(root: Path, modules: int = 7) -> tuple[float, float]:
    """||delta - B@A||_F / ||delta||_F of each tool's adapter over the first ``modules`` LoRA modules. On
    full-rank deltas the rank-r subspace is ill-conditioned (neighbouring singular values are close), so the
    two tools' B@A may differ by about s_{r+1}; what must agree is how much of the delta each keeps."""
    from safetensors.torch import load_file

    def load(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    base, ft = load(root / "base"), load(root / "ft")
    ours, theirs = load(root / "ours"), load(root / "mk")
    keys = [k for k in ours if ".lora_A." in k and k in theirs][:modules]
    errors = []
    for adapter in (ours, theirs):
        num = den = 0.0
        for key in keys:
            name = key[len("base_model.model."):].replace(".lora_A", "")
            delta = ft[name].float() - base[name].float()
            kb = key.replace("lora_A", "lora_B")
            num += float((delta - adapter[kb].float() @ adapter[key].float()).norm() ** 2)
            den += float(delta.norm() ** 2)
        errors.append((num / den) ** 0.5)
    return errors[0], errors[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="where models and outputs go (default: a temporary folder)")
    args = ap.parse_args()
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-extract-"))
    root.mkdir(parents=True, exist_ok=True)
    make_models(root, args.preset)
    for f in (root / "base").glob("*.safetensors"):  # warm page cache, as for the merge benchmark
        f.read_bytes()
    for f in (root / "ft").glob("*.safetensors"):
        f.read_bytes()
    exe = Path(sys.executable)
    ours_cmd = [str(exe), "-m", "hubmerge.cli", "extract-lora", "--model", str(root / "ft"), "--base",
                str(root / "base"), "--rank", str(args.rank), "-o", str(root / "ours"), "-q"]
    theirs_cmd = [str(exe.with_name("mergekit-extract-lora")), "--model", str(root / "ft"), "--base-model",
                  str(root / "base"), "--out-path", str(root / "mk"), "--max-rank", str(args.rank)]
    results: dict[str, list[dict]] = {"hubmerge": [], "mergekit": []}
    for _ in range(args.runs):
        for name, cmd, out in (("mergekit", theirs_cmd, root / "mk"), ("hubmerge", ours_cmd, root / "ours")):
            shutil.rmtree(out, ignore_errors=True)
            results[name].append(measure(cmd, root))
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("wall", "rss")} for n, rs in results.items()}
    p = PRESETS[args.preset]
    print(f"preset {args.preset} ({p}), bf16, rank {args.rank}, {args.runs} run(s) each, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| tool | wall | peak RSS |")
    print("|---|---|---|")
    for name in ("hubmerge", "mergekit"):
        print(f"| {name} | {_fmt_s(med[name]['wall'])} | {_fmt_gib(med[name]['rss'])} |")
    print(f"| ratio | {_ratio(med['hubmerge']['wall'], med['mergekit']['wall'])} | "
          f"{_ratio(med['hubmerge']['rss'], med['mergekit']['rss'])} |")
    inputs = sum(f.stat().st_size for d in ("base", "ft") for f in (root / d).glob("*.safetensors"))
    ours_err, theirs_err = reconstruction_errors(root)
    print(f"inputs {inputs / 2**30:.2f} GiB; relative reconstruction error of the first modules: "
          f"hubmerge {ours_err:.5f}, mergekit {theirs_err:.5f}")


if __name__ == "__main__":
    main()
