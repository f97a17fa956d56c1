"""Push and parts upload each finished shard on a thread of its own while the merge goes on (hub/uploads.py).

``ShardHandoff.submit`` as the merge's ``on_shard`` runs the upload in the background, one at a time: the
merge writes the next shard meanwhile and waits when that one is done too, so at most two finished shards
are ever on disk, and a failed upload stops the merge with its error.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers import family

from hubmerge.hub.uploads import ShardHandoff
from hubmerge.pipeline.run import MergeOptions, run_merge
from hubmerge.spec.parse import parse_spec

SPEC = """
merge_method: linear
models:
  - {model: base, parameters: {weight: 0.5}}
  - {model: chat, parameters: {weight: 0.5}}
"""


@pytest.fixture(scope="module")
def local_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam")
    family(root, dtype="float32", vocab=512, hidden=128, intermediate=256, layers=4)
    return root


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_next_shard_is_written_while_the_previous_is_handed_over(local_family, tmp_path):
    out = tmp_path / "out"
    seen: list[str] = []
    on_disk: list[int] = []
    overlapped: list[bool] = []

    def upload(path: Path) -> None:
        # Finished shards: the ones waiting or uploading in the staging folder, and the merge's own.
        finished = lambda: sorted(p.name for p in tmp_path.rglob("*.safetensors"))  # noqa: E731
        on_disk.append(len(finished()))
        if not seen:
            # While the first shard is "uploading", the merge must finish the second one.
            overlapped.append(_wait_for(lambda: len(finished()) >= 2))
        seen.append(path.name)
        path.unlink()  # uploaded: gone from disk, as push does

    uploads = ShardHandoff(upload, tmp_path / "uploading")
    result = run_merge(parse_spec(SPEC), out, MergeOptions(base_dir=local_family, show_progress=False,
                                                           max_shard_size=300_000, on_shard=uploads.submit))
    uploads.finish()
    assert len(result.shards) >= 4
    assert seen == result.shards  # every shard, in order, each once
    assert overlapped == [True]
    assert max(on_disk) <= 2  # the one handed over and the one just finished, never more


def test_a_failed_hand_over_stops_the_merge(local_family, tmp_path):
    calls: list[str] = []
    release = threading.Event()

    def upload(path: Path) -> None:
        calls.append(path.name)
        if len(calls) == 2:
            raise RuntimeError("upload refused")
        release.set()

    uploads = ShardHandoff(upload, tmp_path / "uploading")
    with pytest.raises(RuntimeError, match="upload refused"):
        try:
            run_merge(parse_spec(SPEC), tmp_path / "out", MergeOptions(
                base_dir=local_family, show_progress=False, max_shard_size=300_000, on_shard=uploads.submit))
        finally:
            uploads.close()
    assert release.is_set() and len(calls) == 2  # nothing handed over after the failure
    assert not (tmp_path / "out").exists()  # the folder was never completed
