"""The records line of an evaluation (docs/official-behaviour.md#evaluation-and-records), with the official
F1 label swap fixed. Written by the evaluation entry point, never from inside the Lightning module."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mdpl.data.tasks import TASKS
from mdpl.errors import ConfigError
from mdpl.train.settings import Settings


def records_path(settings: Settings, task: str) -> str:
    """{records_root}/{task}/{task}_{test_exp_name}_on_missing_{test missing type} (official layout)."""
    name = f"{task}_{settings.run.test_exp_name}_on_missing_{settings.data.missing_type['test']}"
    return os.path.join(settings.run.records_root, task, name)


def check_records(settings: Settings) -> None:
    """With test_exp_name, each records file can be appended to (checked before the evaluation, creating nothing):
    an existing one is a writable file; otherwise its nearest existing folder is writable."""
    if settings.run.test_exp_name is None:
        return
    for task in settings.model.tasks:
        path = Path(records_path(settings, task))
        what = f"config records_root={settings.run.records_root!r}: the records file {str(path)!r}"
        if path.exists():
            if not path.is_file():
                raise ConfigError(f"{what} is not a file")
            if not os.access(path, os.W_OK):
                raise ConfigError(f"{what} is not writable")
            continue
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} cannot be created ({str(folder)!r} is not a writable folder)")


def records_line(settings: Settings, task: str, values: dict[str, float]) -> str:
    """'missing ratio: r, <label>: <value x 100, 2 decimals>, ...' for one task; r is the ratio used."""
    body = ", ".join(
        f"{label}: {values[f'{task}/test/{name}'] * 100:.2f}" for label, name in TASKS[task].records_format
    )
    return f"missing ratio: {settings.data.missing_ratio['test']}, {body}"


def append_line_locked(path: str | os.PathLike, line: str) -> None:
    """Append `line` (a newline is added if absent) to a text file, safe against concurrent appenders.

    Under an exclusive flock the file is opened with O_APPEND, the whole line goes out in one write (retried
    only for a short write) and is fsynced, so lines of concurrent processes never interleave or get lost.
    A last line left without its newline by a crashed writer gets one first, so every line stays whole.
    """
    data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: to look at the last byte
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def append_records(settings: Settings, values: dict[str, float]) -> list[str]:
    """Append one line per task of the model (folders created, appends locked); returns the files written."""
    paths = []
    for task in settings.model.tasks:
        path = records_path(settings, task)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        append_line_locked(path, records_line(settings, task, values))
        paths.append(path)
    return paths
