"""Side-by-side benchmark: mergekit-yaml vs hubmerge on the same specs, same machine, same run.

Generates three models (default: TinyLlama shape, 1.1B parameters, bf16), then for each method runs
the two tools alternately, N times each, as whole processes, and prints median wall time, peak RSS and
the ratios, plus the I/O lower bound measured in the same run (bytes read and written over the read and
fsync-write bandwidth of this machine).

    python benchmarks/bench_merge.py                         # the full 1.1B run (several minutes)
    python benchmarks/bench_merge.py --preset small --runs 3 # a quick one
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = {
    # TinyLlama-1.1B: hidden 2048, 22 layers, intermediate 5632, vocab 32000, 32 heads / 4 kv heads
    "1.1b": dict(vocab=32000, hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4),
    # SmolLM-135M: hidden 576, 30 layers, intermediate 1536, vocab 49152, 9 heads / 3 kv heads, tied embeddings
    "135m": dict(vocab=49152, hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, tie_embeddings=True),
    "small": dict(vocab=8000, hidden=512, intermediate=1408, layers=8, heads=8, kv_heads=2),
    "tiny": dict(vocab=256, hidden=128, intermediate=256, layers=4, heads=4, kv_heads=2),
}

SPECS = {
    "linear": "merge_method: linear\nmodels:\n  - model: base\n    parameters: {weight: 0.4}\n"
              "  - model: a\n    parameters: {weight: 0.3}\n  - model: b\n    parameters: {weight: 0.3}\n",
    "slerp": "merge_method: slerp\nbase_model: base\nmodels:\n  - model: base\n  - model: a\n"
             "parameters:\n  t: [{filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}, {value: 0.5}]\n",
    "task_arithmetic": "merge_method: task_arithmetic\nbase_model: base\nmodels:\n"
                       "  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\n",
    "ties": "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.5, density: 0.5}\n"
            "  - model: b\n    parameters: {weight: 0.5, density: 0.5}\n",
    "dare_ties": "merge_method: dare_ties\nbase_model: base\nmodels:\n"
                 "  - model: a\n    parameters: {weight: 0.5, density: 0.5}\n"
                 "  - model: b\n    parameters: {weight: 0.5, density: 0.5}\n",
}

# Runs a command and reports the child's peak RSS: with a single child, RUSAGE_CHILDREN is that child's.
_MEASURE = ("import resource,subprocess,sys,time,json;t=time.perf_counter();"
            "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.PIPE);"
            "w=time.perf_counter()-t;"
            "print(json.dumps({'rc':r.returncode,'wall':w,'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024,"
            "'err':r.stderr.decode()[-2000:]}))")


def import_baseline() -> int:
    """Peak RSS of an interpreter that only imports torch: what both tools pay before any work, so the
    table can split each peak into this baseline and the working set above it."""
    return measure([sys.executable, "-c", "import torch"], Path.cwd())["rss"]


def measure(cmd: list[str], cwd: Path) -> dict:
    # Offline, from the models' folder: mergekit resolves relative model paths against the working directory.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, check=True,
                         cwd=cwd, env=env)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{result['err']}")
    return result


def make_models(root: Path, preset: str) -> None:
    from hubmerge.demo import TinyShape, make_family

    if (root / "b" / "config.json").exists():
        return
    make_family(root, TinyShape(arch="llama", **PRESETS[preset]), names=("base", "a", "b"), dtype="bfloat16",
                shards=max(1, PRESETS[preset]["layers"] // 11))


def drop_page_cache_hint() -> None:
    """We measure with a warm page cache (as the reference numbers were): read everything once first."""


def read_bandwidth(files: list[Path]) -> tuple[int, float]:
    total = 0
    t = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 24):
                total += len(chunk)
    return total, time.perf_counter() - t


def write_bandwidth(folder: Path, nbytes: int) -> float:
    block = os.urandom(1 << 24)
    path = folder / "bandwidth.tmp"
    t = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        written = 0
        while written < nbytes:
            written += fh.write(block[: min(len(block), nbytes - written)])
        os.fsync(fh.fileno())
    elapsed = time.perf_counter() - t
    path.unlink()
    return elapsed


def _fmt_s(v: float | None) -> str:
    return f"{v:.1f} s" if v is not None else "-"


def _fmt_gib(v: float | None) -> str:
    return f"{v / 2**30:.2f} GiB" if v is not None else "-"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def table_row(r: dict, baseline: int) -> str:
    hm_s, mk_s = r.get("hubmerge_s"), r.get("mergekit_s")
    hm_rss, mk_rss = r.get("hubmerge_rss"), r.get("mergekit_rss")
    hm_ws = hm_rss - baseline if hm_rss is not None else None
    mk_ws = mk_rss - baseline if mk_rss is not None else None
    cells = [r["method"], _fmt_s(hm_s), _fmt_s(mk_s), _ratio(hm_s, mk_s), _fmt_gib(hm_rss), _fmt_gib(mk_rss),
             _ratio(hm_rss, mk_rss), _fmt_gib(hm_ws), _fmt_gib(mk_ws), _ratio(hm_ws, mk_ws), _fmt_s(r["bound_s"]),
             _ratio(hm_s, r["bound_s"])]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1.1b", choices=sorted(PRESETS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--methods", default=",".join(SPECS))
    ap.add_argument("--workdir", default=None, help="where models and outputs go (default: a temp folder)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-mergekit", action="store_true")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hubmerge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    models = work / "models"
    print(f"generating models ({args.preset}) in {models} ...", flush=True)
    make_models(models, args.preset)
    inputs = sorted(models.glob("*/*.safetensors"))
    in_bytes = sum(f.stat().st_size for f in inputs)
    read_bandwidth(inputs)  # warm the page cache
    nread, tread = read_bandwidth(inputs)
    out_bytes = sum(f.stat().st_size for f in (models / "base").glob("*.safetensors"))
    twrite = write_bandwidth(work, out_bytes)
    rbw, wbw = nread / tread, out_bytes / twrite
    print(f"inputs {in_bytes / 1e9:.2f} GB read at {rbw / 1e9:.2f} GB/s; output {out_bytes / 1e9:.2f} GB "
          f"written+fsync at {wbw / 1e9:.2f} GB/s", flush=True)

    # As modules of this interpreter: works in a venv and with packages put on PYTHONPATH alike.
    mergekit_cmd = [sys.executable, "-m", "mergekit.scripts.run_yaml"]
    hubmerge_cmd = [sys.executable, "-m", "hubmerge.cli"]
    rows = []
    for method in args.methods.split(","):
        spec = models / f"{method}.yml"
        spec.write_text(SPECS[method] + "dtype: bfloat16\n")
        times: dict[str, list[dict]] = {"mergekit": [], "hubmerge": []}
        for run in range(args.runs):
            for tool in ("mergekit", "hubmerge"):
                if tool == "mergekit" and args.skip_mergekit:
                    continue
                out = work / f"out-{tool}"
                shutil.rmtree(out, ignore_errors=True)
                if tool == "mergekit":
                    cmd = mergekit_cmd + [str(spec), str(out), "--allow-crimes",
                           "--no-write-model-card"] + (["--cuda"] if args.device == "cuda" else [])
                else:
                    cmd = hubmerge_cmd + ["merge", str(spec), "-o", str(out), "-q", "--device", args.device]
                times[tool].append(measure(cmd, models))
        # the I/O bound: bytes this method must read (all inputs it touches) and write
        n_inputs = 3 if method not in ("slerp",) else 2
        bound = n_inputs * out_bytes / rbw + out_bytes / wbw
        row = {"method": method, "bound_s": bound}
        for tool, results in times.items():
            if results:
                row[f"{tool}_s"] = statistics.median(r["wall"] for r in results)
                row[f"{tool}_rss"] = statistics.median(r["rss"] for r in results)
        rows.append(row)
        print(json.dumps(row), flush=True)

    baseline = import_baseline()
    print()
    print(f"import baseline (python -c 'import torch'): {_fmt_gib(baseline)} peak RSS; working set = peak - baseline")
    print("| method | hubmerge wall | mergekit wall | wall ratio | hubmerge peak RSS | mergekit peak RSS | RSS ratio "
          "| hubmerge working set | mergekit working set | working-set ratio | I/O bound | hubmerge / bound |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(table_row(r, baseline))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
