"""Shared test helpers: tiny model families on disk, reading merged folders back, running the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from hubmerge.demo import TinyShape, make_family


def family(root: Path, arch: str = "llama", dtype: str = "bfloat16", **shape) -> dict[str, Path]:
    return make_family(root, TinyShape(arch=arch, **shape), dtype=dtype)


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs), set(ours) ^ set(theirs)
    different = [k for k in ours if ours[k].dtype != theirs[k].dtype or not torch.equal(ours[k], theirs[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "hubmerge.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_mergekit(spec: Path, out: Path, *extra: str, timeout: int = 600):
    """mergekit-yaml 0.1.5 as the reference, offline."""
    exe = Path(sys.executable).with_name("mergekit-yaml")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(exe), str(spec), str(out), "--allow-crimes", "--no-write-model-card", *extra],
                          cwd=spec.parent, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_mergekit_multi(stages: dict[str, str], root: Path, out: Path, *, timeout: int = 1200):
    """Every stage ({name: YAML}) through one mergekit-multi 0.1.5 process, offline; outputs in ``out/<name>``."""
    multi = root / "mergekit-multi.yml"
    multi.write_text("\n---\n".join(f"name: {name}\n{text}" for name, text in stages.items()))
    exe = Path(sys.executable).with_name("mergekit-multi")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(exe), str(multi), "-I", str(out), "--allow-crimes", "--no-write-model-card",
                           "--no-copy-tokenizer"], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def publish_family(server, repo_id_factory, family_root: Path, names=("base", "chat", "math"), *,
                   namespace: str = "up") -> dict[str, str]:
    """Each of ``names`` from a local family published on the test Hub by another user; {name: repo id}."""
    ids = {}
    for name in names:
        repo = repo_id_factory(namespace=namespace)
        server.create_repo(repo, owner=namespace)
        publish_folder(server, repo, Path(family_root) / name)
        ids[name] = repo
    return ids


def publish_folder(server, repo_id: str, folder: Path, message: str = "upload") -> str:
    """Put a local model folder on the test Hub as one commit (server-side seeding, no client involved)."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}
    try:
        server.create_repo(repo_id)
    except Exception:
        pass
    return server.commit_files(repo_id, files, message=message)


# A TIES recipe over three models of a family; fill in with .format(base=..., chat=..., math=...).
TIES_SPEC = """
merge_method: ties
base_model: {base}
models:
  - model: {chat}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {math}
    parameters: {{weight: [0.2, 0.8], density: 0.7}}
dtype: bfloat16
"""


def parse_mermaid(text: str) -> tuple[dict[str, str], set[tuple[str, str, str]], dict[str, str]]:
    """(node id -> first label line, {(parent label, child label, edge label)}, node id -> click URL)."""
    nodes, edges, clicks = {}, set(), {}
    for line in text.splitlines():
        if m := re.fullmatch(r"\s+(\w+)\(?\[\"(.*?)\"\]\)?", line):
            nodes[m.group(1)] = m.group(2).split("<br/>")[0]
    for line in text.splitlines():
        if m := re.fullmatch(r'\s+(\w+) -->\|"(.*?)"\| (\w+)', line):
            edges.add((nodes[m.group(1)], nodes[m.group(3)], m.group(2)))
        elif m := re.fullmatch(r'\s+click (\w+) href "(.*?)" _blank', line):
            clicks[m.group(1)] = m.group(2)
    return nodes, edges, clicks
