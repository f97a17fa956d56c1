"""pytorch_model*.bin inputs: refused by default, read through torch.load(weights_only=True) when allowed,
and a pickle carrying code refused without running it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import load_folder, publish_folder, run_cli

from hubmerge.demo import TinyShape, base_weights, finetune_weights, write_model
from hubmerge.errors import SourceError
from hubmerge.hub import Hub
from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.sources.open import open_model
from hubmerge.spec import parse_spec
from hubmerge.spec.model import ModelRef

SHAPE = TinyShape(layers=2)


def _as_pickles(folder: Path, shards: int = 1, *, legacy: bool = False) -> Path:
    """Turn a safetensors model folder into a pytorch_model*.bin one (as older transformers saved them)."""
    weights = load_folder(folder)
    for f in folder.glob("*.safetensors*"):
        f.unlink()
    names = list(weights)
    if shards == 1:
        torch.save(weights, folder / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
        return folder
    per = -(-len(names) // shards)
    weight_map = {}
    for s in range(shards):
        file = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = {k: weights[k] for k in names[s * per:(s + 1) * per]}
        torch.save(part, folder / file)
        weight_map.update({k: file for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.fixture
def models(tmp_path):
    base = base_weights(SHAPE, 21)
    safe = write_model(tmp_path / "safe", base, SHAPE, dtype="bfloat16")
    return {"safe": safe, "weights": load_folder(safe),
            "chat": write_model(tmp_path / "chat", finetune_weights(base, 22), SHAPE, dtype="bfloat16"),
            "pickled": lambda name, **kw: _as_pickles(write_model(tmp_path / name, base, SHAPE, dtype="bfloat16"), **kw)}


def test_refused_by_default_naming_file_reason_and_fix(models):
    folder = models["pickled"]("p", shards=2)
    with pytest.raises(SourceError) as err:
        open_model(ModelRef(str(folder)))
    assert "pytorch_model-00001-of-00002.bin" in err.value.message
    assert "arbitrary code" in err.value.message
    assert "--allow-pickle" in err.value.hint and "safetensors" in err.value.hint


@pytest.mark.parametrize("layout", ["single", "sharded", "legacy"])
def test_allowed_pickles_read_exactly(models, layout):
    folder = models["pickled"](layout, shards=2 if layout == "sharded" else 1, legacy=layout == "legacy")
    src = open_model(ModelRef(str(folder)), allow_pickle=True)
    try:
        assert set(src.tensors) == set(models["weights"])
        for name, info in src.tensors.items():
            got = src.reader.read(info)
            assert got.dtype == torch.bfloat16 and torch.equal(got, models["weights"][name]), name
    finally:
        src.close()


def test_one_shard_open_at_a_time(models):
    """Reading in plan order opens each shard once, and only one shard's state dict is held."""
    folder = models["pickled"]("s", shards=3)
    src = open_model(ModelRef(str(folder)), allow_pickle=True)
    reader = src.reader
    held = []
    real_load = reader._load

    def counting_load(path, display):
        held.append(reader._state is None)  # the previous shard was dropped before this one is opened
        return real_load(path, display)

    reader._load = counting_load
    for info in sorted(src.tensors.values(), key=lambda i: (i.file, i.start)):
        reader.read(info)
    assert reader.loads == 3 and all(held)
    src.close()


def test_merge_with_allow_pickle_equals_safetensors_merge(models, tmp_path):
    folder = models["pickled"]("p", shards=2)
    spec_text = "merge_method: linear\nmodels:\n  - model: {m}\n    parameters: {{weight: 0.5}}\n" \
                "  - model: {chat}\n    parameters: {{weight: 0.5}}\n"
    with pytest.raises(SourceError, match="arbitrary code"):
        run_merge(parse_spec(spec_text.format(m=folder, chat=models["chat"])), tmp_path / "refused",
                  MergeOptions(show_progress=False))
    ours = run_merge(parse_spec(spec_text.format(m=folder, chat=models["chat"])), tmp_path / "p-out",
                     MergeOptions(show_progress=False, allow_pickle=True))
    ref = run_merge(parse_spec(spec_text.format(m=models["safe"], chat=models["chat"])), tmp_path / "s-out",
                    MergeOptions(show_progress=False))
    assert ours.content_hash == ref.content_hash
    assert not (tmp_path / "refused").exists()


class _Payload:
    """What a malicious checkpoint does: run a command while being unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["top", "inside"])
def test_code_in_a_pickle_is_refused_and_not_run(models, tmp_path, where):
    folder = models["pickled"]("evil")
    marker = tmp_path / "payload-ran"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save(_Payload(marker) if where == "top" else {**state, "extra": _Payload(marker)},
               folder / "pytorch_model.bin")
    with pytest.raises(SourceError) as err:
        open_model(ModelRef(str(folder)), allow_pickle=True)
    assert "pytorch_model.bin" in err.value.message and "refused to unpickle" in err.value.message
    assert "system" in err.value.message  # names what the file tried to call
    assert "weights_only` set to `False`" not in err.value.message  # torch's advice is not passed on
    assert not marker.exists()
    # the payload is real: an unrestricted unpickler does run it
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_hub_pickles_never_fetched_without_the_flag(hub, repo_id_factory, models):
    repo = repo_id_factory()
    sha = publish_folder(hub, repo, models["pickled"]("hubbed", shards=2))
    client = Hub(endpoint=hub.url, use_cache=False)
    hub.clear_log()
    with pytest.raises(SourceError, match="pytorch_model-00001-of-00002.bin.*arbitrary code"):
        open_model(ModelRef(repo), hub=client)
    assert not [r for r in hub.requests() if r.file and r.file[1].endswith(".bin")]
    src = open_model(ModelRef(repo), hub=client, allow_pickle=True)
    try:
        assert src.revision == sha
        for name, info in src.tensors.items():
            assert torch.equal(src.reader.read(info), models["weights"][name])
    finally:
        src.close()


def test_cli_flag_on_validate_and_merge(models, tmp_path):
    folder = models["pickled"]("cli")
    spec = tmp_path / "spec.yml"
    spec.write_text(f"merge_method: passthrough\nmodels:\n  - model: {folder}\n")
    refused = run_cli("validate", str(spec))
    assert refused.returncode == 2 and "--allow-pickle" in refused.stderr
    assert run_cli("validate", str(spec), "--allow-pickle").returncode == 0
    out = tmp_path / "out"
    merged = run_cli("merge", str(spec), "-o", str(out), "--allow-pickle", "-q")
    assert merged.returncode == 0, merged.stderr
    got = load_folder(out)
    assert all(torch.equal(got[k], models["weights"][k]) for k in models["weights"])


def test_reproduce_of_a_pickle_based_merge_needs_the_flag_again(models, tmp_path):
    """The flag is not recorded in the card: a recipe from elsewhere never turns unpickling on by itself."""
    folder = models["pickled"]("source-pickles")
    spec = tmp_path / "spec.yml"
    spec.write_text(f"merge_method: linear\nmodels:\n  - model: {folder}\n    parameters: {{weight: 0.5}}\n"
                    f"  - model: {models['chat']}\n    parameters: {{weight: 0.5}}\n")
    merged = tmp_path / "merged"
    assert run_cli("merge", str(spec), "-o", str(merged), "--allow-pickle", "-q").returncode == 0
    refused = run_cli("reproduce", str(merged), "-o", str(tmp_path / "again"), "-q")
    assert refused.returncode == 2 and "--allow-pickle" in refused.stderr
    assert not (tmp_path / "again").exists()
    done = run_cli("reproduce", str(merged), "-o", str(tmp_path / "again"), "--allow-pickle")
    assert done.returncode == 0, done.stderr
    assert "matches the content hash its card records" in done.stdout
