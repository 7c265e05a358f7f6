"""Datasets of the three tasks, built from the settings (see DATA.md)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from mdpl.datasets.arrow_dataset import ArrowDataset, read_arrow
from mdpl.datasets.missing import draw_table, load_or_create, table_path
from mdpl.settings import Settings
from mdpl.tasks import SPLITS, task_of_dataset
from mdpl.transforms import keys_to_transforms


def _arrow_path(settings: Settings, split: str, dataset: str) -> Path:
    return Path(settings.data.data_root) / f"{task_of_dataset(dataset).arrow_name(split)}.arrow"


def _arrow(settings: Settings, split: str, dataset: str) -> pa.Table:
    task = task_of_dataset(dataset)
    hint = f"python make_arrow.py --dataset {task.writer} --root R --out {settings.data.data_root or '.'}"
    return read_arrow(_arrow_path(settings, split, dataset), hint)


def missing_table(settings: Settings, split: str, dataset: str | None = None, num_rows: int | None = None):
    """The `split` missing table of settings.data.datasets[0] (or `dataset`): loaded, or drawn and saved."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = settings.data
    dataset = dataset if dataset is not None else d.datasets[0]
    if num_rows is None:
        num_rows = _arrow(settings, split, dataset).num_rows
    return load_or_create(
        d.missing_table_root, task_of_dataset(dataset).arrow_name(split), num_rows, d.missing_ratio[split],
        d.missing_type[split], d.both_ratio, d.table_draw, d.seed,
    )  # fmt: skip


def build_dataset(settings: Settings, split: str, dataset: str | None = None) -> ArrowDataset:
    """The `split` dataset of settings.data.datasets[0] (or `dataset`), with its missing table."""
    d = settings.data
    dataset = dataset if dataset is not None else d.datasets[0]
    task = task_of_dataset(dataset)
    table = _arrow(settings, split, dataset)
    missing = missing_table(settings, split, dataset, table.num_rows)
    keys = d.train_transform_keys if split == "train" else d.val_transform_keys
    return ArrowDataset(
        table,
        task.text_column,
        keys_to_transforms(list(keys), settings.model.image_size),
        missing,
        simulate_missing=d.simulate_missing and split == "train",
        one_text=task.name == "mmimdb" and d.mmimdb_one_plot,
        multilabel=task.multilabel,
        source=str(_arrow_path(settings, split, dataset)),
    )


__all__ = ["SPLITS", "ArrowDataset", "build_dataset", "draw_table", "load_or_create", "missing_table", "read_arrow",
           "table_path"]
