"""Writing files safely: whole or not at all, and temporaries of killed writers cleaned up.

A file is written to a temporary sibling `.{name}.{pid}.tmp` and renamed into place; a writer killed before
the rename leaves only its temporary, which `remove_stale_temporaries` deletes once that process is gone.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def temp_path(path: Path) -> Path:
    """The temporary sibling a file is written to before it is renamed to `path`."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_path(path: Path) -> None:
    """Flush a written file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to: renamed to `path` on success, removed on any failure (an
    exception, Ctrl-C), so `path` is never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def locked_folder(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` (which must exist) for the duration of the block."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the `.{name}.{pid}.tmp` files in `folder` whose writer process no longer runs (killed mid-write);
    returns them. Temporaries of live writers are left alone."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
