"""Datasets of the three tasks, built from the config (REFERENCE §2-§5; see DATA.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mdpl.datasets.arrow_dataset import ArrowDataset, read_arrow
from mdpl.datasets.missing import draw_table, load_or_create, table_path
from mdpl.transforms import keys_to_transforms
from mdpl.writers import WRITERS, WriterSpec

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    """A config["datasets"] entry: its loss key, arrow files and text column."""

    task: str  # the loss_names key
    writer: WriterSpec  # arrow file names (and the make_arrow --dataset value for error messages)
    text_column: str
    multilabel: bool

    def arrow_name(self, split: str) -> str:
        return dict(zip(SPLITS, self.writer.splits.values()))[split]


TASKS = {
    "mmimdb": Task("mmimdb", WRITERS["mmimdb"], "plots", multilabel=True),
    "Food101": Task("food101", WRITERS["food101"], "text", multilabel=False),
    "Hatefull_Memes": Task("hatememes", WRITERS["hateful_memes"], "text", multilabel=False),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"config datasets entry {name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name]


def _arrow(config: dict, split: str, task: Task):
    hint = f"python make_arrow.py --dataset {task.writer.name} --root R --out {config['data_root'] or '.'}"
    return read_arrow(Path(config["data_root"]) / f"{task.arrow_name(split)}.arrow", hint)


def missing_table(config: dict, split: str, name: str | None = None, num_rows: int | None = None):
    """The `split` missing table of config["datasets"][0] (or `name`): loaded, or drawn and saved, from
    config missing_ratio[split], missing_type[split], both_ratio, missing_table_root, table_draw, seed."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    task = get_task(name if name is not None else config["datasets"][0])
    if num_rows is None:
        num_rows = _arrow(config, split, task).num_rows
    return load_or_create(
        config["missing_table_root"], task.arrow_name(split), num_rows, config["missing_ratio"][split],
        config["missing_type"][split], config["both_ratio"], config["table_draw"], config["seed"],
    )  # fmt: skip


def build_dataset(config: dict, split: str, name: str | None = None) -> ArrowDataset:
    """The `split` dataset of config["datasets"][0] (or `name`), with its missing table (see missing_table)."""
    name = name if name is not None else config["datasets"][0]
    task = get_task(name)
    table = _arrow(config, split, task)
    missing = missing_table(config, split, name, table.num_rows)
    keys = config["train_transform_keys"] if split == "train" else config["val_transform_keys"]
    return ArrowDataset(
        table,
        task.text_column,
        keys_to_transforms(keys, config["image_size"]),
        missing,
        simulate_missing=config["simulate_missing"] and split == "train",
        one_text=task.task == "mmimdb" and config["mmimdb_one_plot"],
        multilabel=task.multilabel,
    )


__all__ = [
    "SPLITS", "TASKS", "ArrowDataset", "Task", "build_dataset", "draw_table", "get_task", "load_or_create",
    "missing_table", "read_arrow", "table_path",
]  # fmt: skip
