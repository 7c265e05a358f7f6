"""The records line of an evaluation (docs/official-behaviour.md#evaluation-and-records), with the official
F1 label swap fixed. Written by the evaluation entry point, never from inside the Lightning module."""

from __future__ import annotations

import os

from mdpl.settings import Settings
from mdpl.tasks import TASKS


def records_path(settings: Settings, task: str) -> str:
    """{records_root}/{task}/{task}_{test_exp_name}_on_missing_{test missing type} (official layout)."""
    name = f"{task}_{settings.run.test_exp_name}_on_missing_{settings.data.missing_type['test']}"
    return os.path.join(settings.run.records_root, task, name)


def records_line(settings: Settings, task: str, values: dict[str, float], phase: str = "test") -> str:
    """'missing ratio: r, <label>: <value x 100, 2 decimals>, ...' for one task; r is the ratio used."""
    body = ", ".join(f"{label}: {values[f'{task}/{phase}/{name}'] * 100:.2f}"
                     for label, name in TASKS[task].records_format)
    return f"missing ratio: {settings.data.missing_ratio['test']}, {body}"


def append_line(path: str, line: str) -> None:
    """Append one whole line (folders created)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def append_records(settings: Settings, values: dict[str, float], phase: str = "test") -> list[str]:
    """Append one line per task of the model; returns the files written."""
    paths = []
    for task in settings.model.tasks:
        path = records_path(settings, task)
        append_line(path, records_line(settings, task, values, phase))
        paths.append(path)
    return paths
