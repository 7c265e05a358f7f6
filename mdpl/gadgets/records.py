"""The records line of an evaluation (REFERENCE §10), with the official F1 label swap fixed."""

from __future__ import annotations

import os
from pathlib import Path

from mdpl.writers.common import atomic_path


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


def append_records(config: dict, values: dict[str, float], phase: str = "test") -> list[str]:
    """Append one line per active task; folders are created and the file is replaced atomically."""
    paths = []
    for task in ("mmimdb", "food101", "hatememes"):
        if config["loss_names"].get(task, 0) <= 0:
            continue
        path = records_path(config, task)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        old = open(path).read() if os.path.exists(path) else ""
        with atomic_path(Path(path)) as tmp:
            tmp.write_text(old + records_line(config, task, values, phase) + "\n")
        paths.append(path)
    return paths
