"""Datasets of the three tasks, built from the settings (see DATA.md)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from mdpl.datasets.arrow_dataset import ArrowDataset, read_arrow
from mdpl.datasets.missing import draw_table, load_or_create, table_path
from mdpl.settings import ConfigError, Settings
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


def check_labels(settings: Settings, table: pa.Table, split: str, dataset: str) -> None:
    """Labels fit the configured class count: class indices below {task}_class_num (-100, ignored by the
    metrics, aside), multi-hot labels exactly {task}_class_num wide. The error names the key and the file."""
    task = task_of_dataset(dataset)
    key = task.class_num_key
    n = getattr(settings.model, key)
    if "label" not in table.column_names or table.num_rows == 0:
        return  # ArrowDataset names a missing column
    labels, path = table.column("label"), _arrow_path(settings, split, dataset)
    if task.multilabel:
        lengths = pc.list_value_length(labels)
        widths = sorted({w for w in (pc.min(lengths).as_py(), pc.max(lengths).as_py()) if w is not None})
        if widths and widths != [n]:
            raise ConfigError(
                f"config {key}={n}: {str(path)!r} holds multi-hot labels of {widths[-1]} classes "
                f"(width {' to '.join(map(str, widths))}); set {key}={widths[-1]} or rewrite the file"
            )
        return
    largest = pc.max(labels).as_py()
    if largest is not None and largest >= n:
        raise ConfigError(
            f"config {key}={n}: {str(path)!r} holds label {largest} (the largest found); class "
            f"indices must be below {key}: set {key}={largest + 1} or more, or rewrite the file"
        )


def check_data(settings: Settings, nonempty: tuple[str, ...] = ("train", "val")) -> None:
    """Before a run writes anything: every split's labels fit the class count (check_labels), and the
    `nonempty` splits hold samples (no train samples: nothing to fit; no val samples: no val/the_metric, so
    no best checkpoint could be kept). Errors name the arrow file."""
    for dataset in settings.data.datasets:
        for split in SPLITS:
            table = _arrow(settings, split, dataset)
            if split in nonempty and table.num_rows == 0:
                use = {
                    "train": "nothing to train on",
                    "val": "no val/the_metric, so no best checkpoint could be kept",
                    "test": "nothing to evaluate",
                }[split]
                raise ValueError(
                    f"{str(_arrow_path(settings, split, dataset))!r}: the {split} split has no samples "
                    f"({use}); re-run make_arrow with a non-empty {split} split"
                )
            check_labels(settings, table, split, dataset)


def build_dataset(settings: Settings, split: str, dataset: str | None = None) -> ArrowDataset:
    """The `split` dataset of settings.data.datasets[0] (or `dataset`), with its missing table."""
    d = settings.data
    dataset = dataset if dataset is not None else d.datasets[0]
    task = task_of_dataset(dataset)
    table = _arrow(settings, split, dataset)
    check_labels(settings, table, split, dataset)
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


__all__ = [
    "SPLITS",
    "ArrowDataset",
    "build_dataset",
    "check_data",
    "check_labels",
    "draw_table",
    "load_or_create",
    "missing_table",
    "read_arrow",
    "table_path",
]
