"""The datasets of a run (see DATA.md): its Arrow files, read once, their missing tables and the datasets.

`DataConfig` is what the data layer needs of the settings (mdpl.train.settings checks every value).
`Splits(cfg)` opens each configured dataset's train, val and test Arrow files once; `check` verifies them
before a run writes anything, `tables` gives the missing tables of a missing setting (drawn in the official
order), and `dataset` builds the ArrowDataset of a split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from torch import Tensor

from mdpl.data.arrow import ArrowDataset, read_arrow
from mdpl.data.missing import split_tables
from mdpl.data.tasks import SPLITS, task_of_dataset
from mdpl.data.transforms import keys_to_transforms
from mdpl.errors import ConfigError, DataError


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[str, ...]
    data_root: str
    missing_ratio: dict  # split -> ratio, after test_ratio
    missing_type: dict  # split -> type, after test_type
    both_ratio: float
    missing_table_root: str
    table_draw: str  # "official" | "seeded"
    simulate_missing: bool
    mmimdb_one_plot: bool
    train_transform_keys: tuple[str, ...]
    val_transform_keys: tuple[str, ...]
    image_size: int
    tokenizer: str  # see mdpl.data.tokenizers
    max_text_len: int
    class_nums: dict  # task -> class count (labels are checked against it)
    per_gpu_batchsize: int
    num_workers: int
    seed: int
    train_order: str  # "official": DistributedSampler's seed 0 at any run seed; "seeded": the run seed

    def at(self, ratio: float, missing_type: str) -> DataConfig:
        """This config evaluated at another test setting (test_ratio / test_type: val and test, never train)."""
        return replace(
            self,
            missing_ratio={**self.missing_ratio, "val": ratio, "test": ratio},
            missing_type={**self.missing_type, "val": missing_type, "test": missing_type},
        )


class Splits:
    """The Arrow tables of every configured dataset and split, each file read once (memory-mapped)."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.paths = {(d, s): arrow_path(cfg, s, d) for d in cfg.datasets for s in SPLITS}
        self.tables: dict[tuple[str, str], pa.Table] = {}
        for (dataset, split), path in self.paths.items():
            hint = f"python make_arrow.py --dataset {task_of_dataset(dataset).writer} --root R --out {cfg.data_root}"
            self.tables[dataset, split] = read_arrow(path, hint)

    def check(self, nonempty: tuple[str, ...] = ("train", "val")) -> None:
        """Every split's labels fit the class count, and the `nonempty` splits hold samples (no train samples:
        nothing to fit; no val samples: no val/the_metric, so no best checkpoint). Errors name the file."""
        for (dataset, split), table in self.tables.items():
            path = self.paths[dataset, split]
            if split in nonempty and table.num_rows == 0:
                use = {"train": "nothing to train on", "test": "nothing to evaluate",
                       "val": "no val/the_metric, so no best checkpoint could be kept"}[split]  # fmt: skip
                raise DataError(
                    f"{str(path)!r}: the {split} split has no samples ({use}); re-run make_arrow with a non-empty "
                    f"{split} split"
                )
            check_labels(self.cfg, table, path, dataset)

    def tables_for(self, cfg: DataConfig | None = None) -> dict[tuple[str, str], Tensor]:
        """(dataset, split) -> missing table for `cfg`'s missing setting (default: this one's), loaded or drawn
        and saved, in the official order: each dataset's train, val and test table (also for an evaluation)."""
        cfg = cfg or self.cfg
        keys = list(self.tables)
        specs = [(s, task_of_dataset(d).arrow_name(s), self.tables[d, s].num_rows, cfg.missing_ratio[s],
                  cfg.missing_type[s]) for d, s in keys]  # fmt: skip
        tables = split_tables(specs, cfg.missing_table_root, cfg.both_ratio, cfg.table_draw, cfg.seed)
        return dict(zip(keys, tables))

    def dataset(self, split: str, dataset: str, tables: list[Tensor]) -> ArrowDataset:
        """The `split` ArrowDataset of `dataset` with missing `tables` (one, or one per grid point)."""
        cfg, task = self.cfg, task_of_dataset(dataset)
        keys = cfg.train_transform_keys if split == "train" else cfg.val_transform_keys
        return ArrowDataset(
            self.tables[dataset, split],
            task.text_column,
            keys_to_transforms(list(keys), cfg.image_size),
            tables,
            simulate_missing=cfg.simulate_missing and split == "train",
            one_text=task.name == "mmimdb" and cfg.mmimdb_one_plot,
            multilabel=task.multilabel,
            source=str(self.paths[dataset, split]),
        )


def arrow_path(cfg: DataConfig, split: str, dataset: str) -> Path:
    return Path(cfg.data_root) / f"{task_of_dataset(dataset).arrow_name(split)}.arrow"


def check_labels(cfg: DataConfig, table: pa.Table, path: Path, dataset: str) -> None:
    """Labels fit the configured class count: class indices below {task}_class_num (-100, ignored by the
    metrics, aside), multi-hot labels exactly {task}_class_num wide. The error names the key and the file."""
    task = task_of_dataset(dataset)
    key, n = task.class_num_key, cfg.class_nums[task.name]
    if "label" not in table.column_names or table.num_rows == 0:
        return  # ArrowDataset names a missing column
    labels = table.column("label")
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
