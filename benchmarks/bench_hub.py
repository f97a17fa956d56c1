"""Merges streamed from the Hub over a shaped network, side by side with what users do today.

The test Hub (tests/hubserver.py) serves generated models on loopback, shaped like a real link
(tests/netshape.py): a round trip per request and per new connection, a per-connection cap (a CDN's
per-stream limit), an aggregate cap and an upload cap, with LFS files redirected to a second origin as
the Hub's CDN does. For each link profile, three ways to get a merged model onto the Hub run in turn,
each in fresh cache and temp folders:

  a. ``hubmerge push spec.yml``: inputs range-read while merging, shards uploaded as they are written;
  b. ``snapshot_download`` of every input, ``mergekit-yaml``, ``upload_folder`` (LazyMergekit's and
     mergekit-gui's way);
  c. ``hubmerge push --download``: inputs downloaded to the HF cache first, then merged and pushed.

It prints wall time, bytes read from the Hub, peak disk (HF cache + temp + output folders), peak RSS,
and the network lower bound: the bytes a merge must read over the aggregate cap plus its upload over
the upload cap (the issue's definition; with a full-duplex link that overlaps them, the bound is the
larger of the two, printed as well). A local ``hubmerge merge`` of the same models gives the RSS
reference.

    python benchmarks/bench_hub.py                       # 1.1B models, three profiles (~15 minutes)
    python benchmarks/bench_hub.py --preset small --profiles cdn --paths a,c   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from bench_merge import PRESETS, make_models  # noqa: E402
from hubserver import HubServer  # noqa: E402
from netshape import LinkProfile  # noqa: E402

MB = 1_000_000
PROFILES = {
    "near": LinkProfile("near", latency=0.005, per_connection=200 * MB, aggregate=400 * MB, upload=400 * MB),
    "cdn": LinkProfile("cdn", latency=0.040, per_connection=50 * MB, aggregate=400 * MB, upload=400 * MB),
    "far": LinkProfile("far", latency=0.100, per_connection=20 * MB, aggregate=160 * MB, upload=160 * MB),
}
TOKEN = "hf_bench_0123456789abcdefghijklmnopqrs"
MODELS = ("base", "a", "b")
SPEC = """merge_method: linear
models:
  - {{model: {base}, parameters: {{weight: 0.4}}}}
  - {{model: {a}, parameters: {{weight: 0.3}}}}
  - {{model: {b}, parameters: {{weight: 0.3}}}}
dtype: bfloat16
"""

# Path b as one process tree, so its peak RSS covers the downloads, mergekit and the upload alike.
_MERGEKIT_PATH = r"""
import subprocess, sys
from pathlib import Path
from huggingface_hub import HfApi, snapshot_download
spec_template, repos, target, out = sys.argv[1], sys.argv[2].split(","), sys.argv[3], Path(sys.argv[4])
paths = {name: snapshot_download(repo) for name, repo in zip(("base", "a", "b"), repos)}
spec = out.parent / "mergekit.yml"
spec.write_text(spec_template.format(**paths))
subprocess.run([sys.executable, "-m", "mergekit.scripts.run_yaml", str(spec), str(out), "--allow-crimes",
                "--out-shard-size", "1B"], check=True, stdout=subprocess.DEVNULL)
api = HfApi()
api.create_repo(target, exist_ok=True)
api.upload_folder(repo_id=target, folder_path=str(out))
"""

_MEASURE = ("import resource,subprocess,sys,time,json;t=time.perf_counter();"
            "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.PIPE);"
            "w=time.perf_counter()-t;"
            "print(json.dumps({'rc':r.returncode,'wall':w,"
            "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024,'err':r.stderr.decode()[-3000:]}))")


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


class DiskWatch:
    """Samples the bytes under some folders every 50 ms and keeps the peak of their sum."""

    def __init__(self, folders: list[Path]):
        self.folders, self.peak = folders, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, sum(folder_bytes(f) for f in self.folders))

    def __enter__(self) -> "DiskWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], env: dict, watch: list[Path]) -> dict:
    with DiskWatch(watch) as disk:
        out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{result['err']}")
    result["disk"] = disk.peak
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="1.1b", choices=sorted(PRESETS))
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--paths", default="a,b,c", help="a = hubmerge push, b = download + mergekit + upload, "
                                                     "c = hubmerge push --download")
    ap.add_argument("--max-shard-size", default="500MB", help="hubmerge's output shards (push uploads each)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hubmerge-bench-hub-"))
    models = work / "models"
    print(f"generating models ({args.preset}) in {models} ...", flush=True)
    make_models(models, args.preset)
    (work / "blobs").mkdir(parents=True, exist_ok=True)
    server = HubServer(token=TOKEN, blob_dir=str(work / "blobs")).start()
    repos = {}
    for name in MODELS:
        repos[name] = f"bench/{name}"
        server.create_repo(repos[name])
        server.commit_files(repos[name], {p.name: p.read_bytes() for p in (models / name).iterdir() if p.is_file()})
    needed = sum(f.stat().st_size for name in MODELS for f in (models / name).glob("*.safetensors"))
    out_bytes = sum(f.stat().st_size for f in (models / "base").glob("*.safetensors"))
    server.enable_cdn_redirect("lfs")
    spec = work / "spec.yml"
    spec.write_text(SPEC.format(**repos))
    local_spec = work / "local.yml"
    local_spec.write_text(SPEC.format(**{n: str(models / n) for n in MODELS}))

    base_env = {**os.environ, "HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_ETAG_TIMEOUT": "30",
                "HF_HUB_DOWNLOAD_TIMEOUT": "60"}
    hubmerge = [sys.executable, "-m", "hubmerge.cli"]
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    local = run_measured(hubmerge + ["merge", str(local_spec), "-o", str(scratch / "local"), "-q",
                                     "--max-shard-size", args.max_shard_size], base_env, [scratch])
    print(f"local hubmerge merge: {local['wall']:.1f} s, peak RSS {local['rss'] / 2**30:.2f} GiB", flush=True)
    shutil.rmtree(scratch / "local")

    rows = []
    for profile_name in args.profiles.split(","):
        profile = PROFILES[profile_name]
        print(profile.describe(), flush=True)
        bound = needed / profile.aggregate + out_bytes / profile.upload
        duplex = max(needed / profile.aggregate, out_bytes / profile.upload)
        for path in args.paths.split(","):
            home, tmp = scratch / "hf-home", scratch / "tmp"
            for folder in (home, tmp):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
            env = {**base_env, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "TMPDIR": str(tmp)}
            target = f"bench/out-{profile_name}-{path}"
            if path == "b":
                cmd = [sys.executable, "-c", _MERGEKIT_PATH, SPEC, ",".join(repos[n] for n in MODELS), target,
                       str(tmp / "merged")]
            else:
                cmd = hubmerge + ["push", str(spec), "--repo", target, "-q", "--max-shard-size", args.max_shard_size]
                cmd += ["--download"] if path == "c" else []
            server.shape(profile)
            server.clear_log()
            result = run_measured(cmd, env, [home, tmp])
            server.shape(None)
            read = sum(server.bytes_for(repos[n]) for n in MODELS)
            row = {"profile": profile_name, "path": path, "wall": result["wall"], "read": read,
                   "disk": result["disk"], "rss": result["rss"], "bound": bound, "duplex": duplex}
            rows.append(row)
            print(json.dumps(row), flush=True)
    server.stop()

    names = {"a": "hubmerge push (streamed)", "b": "download + mergekit + upload", "c": "hubmerge push --download"}
    print()
    print(f"inputs {needed / 1e9:.2f} GB, output {out_bytes / 1e9:.2f} GB; local hubmerge merge "
          f"{local['wall']:.1f} s, {local['rss'] / 2**30:.2f} GiB peak RSS")
    print("| link | path | wall | read from Hub | peak disk | peak RSS | network bound | wall / bound | "
          "wall / duplex bound | wall / path b |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = next((x["wall"] for x in rows if x["profile"] == r["profile"] and x["path"] == "b"), None)
        print(f"| {PROFILES[r['profile']].describe()} | {names[r['path']]} | {r['wall']:.1f} s | "
              f"{r['read'] / 1e9:.2f} GB | {r['disk'] / 1e9:.2f} GB | {r['rss'] / 2**30:.2f} GiB | "
              f"{r['bound']:.1f} s | {r['wall'] / r['bound']:.2f}x | {r['wall'] / r['duplex']:.2f}x | "
              + (f"{r['wall'] / b:.2f}x |" if b else "- |"))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
