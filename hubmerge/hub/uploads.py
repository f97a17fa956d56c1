"""Uploading finished shards while the merge goes on."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable


class ShardHandoff:
    """Runs ``on_shard`` (an upload) for each finished shard on a thread of its own, so the upload overlaps
    the merge of the next shard. Pass ``submit`` as the merge's ``on_shard``. One call at a time: a shard
    finished while the previous call still runs waits for it, which keeps at most two shards on disk (the
    one being uploaded and the one just written). The first error is raised on the next ``submit``
    (stopping the merge) or on ``finish``, which waits for the last upload; ``close`` only waits.

    A shard is moved into ``staging`` (a folder on the same filesystem) before its upload starts: the
    merge renames its output folder when it completes, which must not pull the file from under an upload
    still running."""

    def __init__(self, on_shard: Callable[[Path], None], staging: Path):
        self.on_shard = on_shard
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self._idle = threading.Semaphore(1)
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []

    def submit(self, path: Path) -> None:
        self._idle.acquire()  # the previous shard's call has returned
        if self._error is not None:
            self._idle.release()
            raise self._error
        moved = self.staging / path.name
        os.replace(path, moved)
        thread = threading.Thread(target=self._run, args=(moved,), name="hubmerge-shard-upload", daemon=True)
        self._threads = [thread]
        thread.start()

    def _run(self, path: Path) -> None:
        try:
            self.on_shard(path)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the merge's threads
            self._error = exc
        finally:
            self._idle.release()

    def finish(self) -> None:
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        for thread in self._threads:
            thread.join()
        self._threads = []
