"""Atomic output folders: everything is written into a hidden partial folder beside the target and
renamed into place at the end, so an interrupted run never leaves a folder that looks complete."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable

from hubmerge.errors import OutputError

logger = logging.getLogger(__name__)


def partial_path(target: Path) -> Path:
    return target.parent / f".{target.name}.hubmerge-partial"


MARKER = ".hubmerge-output"  # in every folder hubmerge wrote: only such a folder may be replaced (--overwrite)
SYSTEM_ROOTS = ("/proc", "/sys", "/dev")
_LOCKS: dict[Path, tuple[int, Path]] = {}  # partial folder -> (locked fd, lock file), held until commit/discard


def is_hubmerge_output(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_target(target: Path, *, overwrite: bool, protected: Iterable[Path] = ()) -> Path:
    """The resolved output folder, refusing one that must not be written: a symlink, a system folder, the
    current folder (or one holding it), a folder that is, holds or lies inside ``protected`` (the inputs, the
    spec), an existing non-empty folder without --overwrite, and with --overwrite anything that is not a
    previous hubmerge output (it would be deleted)."""
    given = Path(os.path.abspath(target))
    if given.is_symlink():
        raise OutputError(f"output {target} is a symbolic link; refusing to write through it",
                          hint="name the real folder with -o, or another folder")
    resolved = given.resolve()
    if resolved == Path(resolved.anchor) or any(_inside(resolved, Path(r)) for r in SYSTEM_ROOTS):
        raise OutputError(f"output {target} is not a place for a model folder")
    cwd = Path.cwd().resolve()
    if _inside(cwd, resolved):
        raise OutputError(f"output {target} is the current folder or holds it; refusing to replace it",
                          hint="choose a new folder for -o, e.g. -o merged")
    for item in protected:
        item = Path(item).resolve()
        if _inside(resolved, item) or _inside(item, resolved):
            what = "is" if resolved == item else ("lies inside" if _inside(resolved, item) else "holds")
            raise OutputError(f"output {target} {what} {item}, which this merge reads; refusing to write there",
                              hint="choose an output folder apart from the inputs and the spec")
    if resolved.exists() or given.is_symlink():
        if not resolved.is_dir():
            raise OutputError(f"output {target} exists and is not a folder")
        if any(resolved.iterdir()):
            if not overwrite:
                raise OutputError(f"output folder {resolved} already exists",
                                  hint="pass --overwrite to replace it, or choose another -o folder")
            if not is_hubmerge_output(resolved):
                raise OutputError(f"output folder {resolved} is not a hubmerge output (no {MARKER} in it); "
                                  "--overwrite only replaces folders hubmerge wrote",
                                  hint="remove it yourself if it may go, or choose another -o folder")
    return resolved


def _lock(target: Path, partial: Path) -> None:
    lock_file = target.parent / f".{target.name}.hubmerge-lock"
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write beside {target}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(f"another hubmerge run is writing {target} right now",
                          hint="wait for it to finish, or choose another -o folder") from None
    _LOCKS[partial] = (fd, lock_file)


def _unlock(partial: Path) -> None:
    held = _LOCKS.pop(partial, None)
    if held is not None:
        fd, lock_file = held
        try:
            lock_file.unlink(missing_ok=True)
        finally:
            os.close(fd)


def prepare_partial(target: Path, *, resume: bool, overwrite: bool, protected: Iterable[Path] = ()) -> Path:
    """A hidden partial folder beside ``target`` (checked by ``check_target``), locked against a second run
    into the same output until ``commit_partial`` or ``discard_partial``."""
    target = check_target(target, overwrite=overwrite, protected=protected)
    created: list[Path] = []
    parent = target.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {target.parent}: {exc.strerror}") from None
    partial = partial_path(target)
    _lock(target, partial)
    try:
        if partial.exists() and not resume:
            logger.info("removing a stale partial output at %s (use --resume to continue it)", partial)
            shutil.rmtree(partial)
        partial.mkdir(exist_ok=True)
    except BaseException:
        _unlock(partial)
        raise
    _CREATED[partial] = created
    return partial


_CREATED: dict[Path, list[Path]] = {}  # partial -> parent folders prepare_partial made (removed if it fails)


def commit_partial(partial: Path, target: Path) -> None:
    """Move the finished folder into place; an existing target is replaced only after success."""
    target = target.resolve()
    (partial / MARKER).write_text("written by hubmerge; `--overwrite` may replace this folder\n")
    _fsync_dir(partial)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.hubmerge-old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(partial, target)
    _fsync_dir(target.parent)
    _unlock(partial)
    _CREATED.pop(partial, None)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard_partial(partial: Path, *, keep_if_resumable: bool) -> None:
    try:
        if not partial.exists():
            return
        if keep_if_resumable and any(p.suffix == ".safetensors" for p in partial.iterdir()):
            logger.warning("partial output kept at %s; run again with --resume to continue", partial)
            return
        shutil.rmtree(partial, ignore_errors=True)
        for folder in _CREATED.get(partial, []):  # parents this run created, innermost first, if still empty
            try:
                folder.rmdir()
            except OSError:
                break
    finally:
        _unlock(partial)
        _CREATED.pop(partial, None)


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
