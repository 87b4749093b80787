"""Crash-safe file writing: write to a temporary name in the same folder, then rename into place."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Iterator

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it to `path`, on error delete it.

    A reader therefore sees either the old file, no file, or the complete new one, never a truncated file,
    even if the process is killed (SIGKILL) while writing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    if tmp.exists():
        tmp.unlink()
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (sorted keys, indented, non-JSON values via `str`)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def now_iso() -> str:
    """The time now as ISO 8601 UTC with seconds (`2026-12-03T08:31:55Z`), as session files store it."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_writable(folder: str | os.PathLike, what: str, fix: str) -> Path:
    """Raise `RigError` unless files can be made in `folder` (made later if missing): it must not be a file,
    and it (or, when missing, its nearest existing parent) must be a writable folder. `what` names the folder
    for the message (e.g. "archive"), `fix` says what to do. Returns `folder` as a Path.

    Checked before anything is written, so a read-only archive or an `--archive` naming a file fails at once
    with one line, instead of an `OSError` halfway through."""
    from .errors import RigError

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        at = "is a file" if existing == folder else f"is under the file {existing}"
        raise RigError(f"{what} {folder} {at}, not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(existing) else "permission denied"
        raise RigError(f"cannot write in {what} {folder} ({reason}); {fix}")
    return folder


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def describe_os_error(error: OSError) -> str:
    """An `OSError` as one line that says which file and what to do (for the CLI's `error:` line)."""
    import errno

    where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None) or "a file"
    fixes = {errno.EROFS: "the file system is read-only: use a writable folder (--archive DIR)",
             errno.EACCES: "check the permissions, or use a folder you can write (--archive DIR)",
             errno.EPERM: "check the permissions, or use a folder you can write (--archive DIR)",
             errno.ENOSPC: "free some disk space",
             errno.EDQUOT: "free some disk space (quota exceeded)",
             errno.ENOTDIR: "a file is where a folder is needed: give a folder path",
             errno.EISDIR: "a folder is where a file is needed: give a file path",
             errno.ENOENT: "check the path"}
    fix = fixes.get(error.errno, "check the path and its permissions")
    return f"{where}: {error.strerror or error}; {fix}"
