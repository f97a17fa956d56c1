"""Atomic output folders: everything is written into a hidden partial folder beside the target and
renamed into place at the end, so an interrupted run never leaves a folder that looks complete."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from hubmerge.errors import OutputError

logger = logging.getLogger(__name__)


def partial_path(target: Path) -> Path:
    return target.parent / f".{target.name}.hubmerge-partial"


def prepare_partial(target: Path, *, resume: bool, overwrite: bool) -> Path:
    target = target.resolve()
    if target.exists() and not overwrite:
        if target.is_dir() and not any(target.iterdir()):
            pass
        else:
            raise OutputError(f"output folder {target} already exists",
                              hint="pass --overwrite to replace it, or choose another -o folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {target.parent}: {exc.strerror}") from None
    partial = partial_path(target)
    if partial.exists() and not resume:
        logger.info("removing a stale partial output at %s (use --resume to continue it)", partial)
        shutil.rmtree(partial)
    partial.mkdir(exist_ok=True)
    return partial


def commit_partial(partial: Path, target: Path) -> None:
    """Move the finished folder into place; an existing target is replaced only after success."""
    target = target.resolve()
    _fsync_dir(partial)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.hubmerge-old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(partial, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard_partial(partial: Path, *, keep_if_resumable: bool) -> None:
    if not partial.exists():
        return
    if keep_if_resumable and any(p.suffix == ".safetensors" for p in partial.iterdir()):
        logger.warning("partial output kept at %s; run again with --resume to continue", partial)
        return
    shutil.rmtree(partial, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
