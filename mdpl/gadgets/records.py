"""The records line of an evaluation (REFERENCE §10), with the official F1 label swap fixed."""

from __future__ import annotations

import fcntl
import os


def records_path(config: dict, task: str) -> str:
    """{records_root}/{task}/{task}_{test_exp_name}_on_missing_{test_type} (official layout)."""
    name = f"{task}_{config['test_exp_name']}_on_missing_{config['test_type']}"
    return os.path.join(config["records_root"], task, name)


def records_line(config: dict, task: str, values: dict[str, float], phase: str = "test") -> str:
    """'missing ratio: r, <metric>: <value x 100, 2 decimals>, ...' for one task."""
    def v(name: str) -> str:
        return f"{values[f'{task}/{phase}/{name}'] * 100:.2f}"

    if task == "mmimdb":
        body = (f"F1-Macro: {v('f1_macro')}, F1-Micro: {v('f1_micro')}, "
                f"F1-Weighted: {v('f1_weighted')}, F1-Sample: {v('f1_samples')}")
    elif task == "food101":
        body = f"Accuracy: {v('accuracy')}"
    else:
        body = f"AUROC: {v('auroc')}, Accuracy: {v('accuracy')}"
    return f"missing ratio: {config['test_ratio']}, {body}"


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
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def append_records(config: dict, values: dict[str, float], phase: str = "test") -> list[str]:
    """Append one line per active task; folders are created, appends are locked (see append_line_locked)."""
    paths = []
    for task in ("mmimdb", "food101", "hatememes"):
        if config["loss_names"].get(task, 0) <= 0:
            continue
        path = records_path(config, task)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        append_line_locked(path, records_line(config, task, values, phase))
        paths.append(path)
    return paths
