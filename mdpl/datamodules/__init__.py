"""The LightningDataModule for settings.data.datasets (see DATA.md).

Loaders are plain torch DataLoaders: train shuffles, val and test do not (official val shuffled; see
docs/official-behaviour.md#official-defects-and-our-fixes). Under DDP, Lightning swaps in a DistributedSampler.
"""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from mdpl.datamodules.collate import Collator
from mdpl.datasets import SPLITS, build_dataset, missing_table
from mdpl.settings import Settings
from mdpl.tokenizer import get_tokenizer


def usable_workers(requested: int) -> int:
    """num_workers, reduced (with one line saying so) to the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > cpus:
        if requested not in _REDUCED:
            print(f"num_workers={requested} reduced to {cpus}: this machine has {cpus} CPUs for this process",
                  flush=True)
            _REDUCED.add(requested)
        return cpus
    return requested


_REDUCED: set[int] = set()  # said once per process


def build_collator(settings: Settings) -> Collator:
    return Collator(get_tokenizer(settings.model.tokenizer), settings.model.max_text_len)


class MissingDataModule(pl.LightningDataModule):
    """Train/val/test datasets of every settings.data.datasets entry (concatenated when several, as the
    official MTDataModule). setup() builds them once, dataset by dataset in train, val, test order, which is
    the order the official global-RNG table draws depend on."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.datasets: dict[str, Dataset] = {}
        self.collate = build_collator(settings)
        self.num_workers = usable_workers(settings.data.num_workers)

    def prepare_data(self) -> None:
        # Lightning runs this on local rank 0 alone, before any setup(): the tables are drawn here in the
        # official order, so every rank then loads what a single process would have drawn. (A rank that
        # found, say, the train table already written would skip that draw and draw val and test from
        # another point of the global `random` stream.)
        for name in self.settings.data.datasets:
            for split in SPLITS:
                missing_table(self.settings, split, name)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        per_split: dict[str, list[Dataset]] = {s: [] for s in SPLITS}
        for name in self.settings.data.datasets:
            for split in SPLITS:
                per_split[split].append(build_dataset(self.settings, split, name))
        self.datasets = {s: d[0] if len(d) == 1 else ConcatDataset(d) for s, d in per_split.items()}

    def _loader(self, split: str) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            self.datasets[split],
            batch_size=self.settings.data.per_gpu_batchsize,
            shuffle=split == "train",
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,  # validation every val_check_interval reuses them
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def build_datamodule(settings: Settings) -> MissingDataModule:
    return MissingDataModule(settings)


def build_test_loader(settings: Settings, ratio: float, missing_type: str) -> DataLoader:
    """A test loader for another (ratio, type) setting, leaving `settings` alone.

    It runs the whole official setup with test_ratio/test_type set (train and val tables are loaded or drawn
    first), so with table_draw="official" the caller seeds `random` as a run would
    (pl.seed_everything(seed)) to get the official test table of a fresh run with these overrides.
    """
    point = Settings.from_config({**settings.config, "test_ratio": ratio, "test_type": missing_type})
    dm = build_datamodule(point)
    dm.setup("test")
    return dm.test_dataloader()


__all__ = ["Collator", "MissingDataModule", "build_collator", "build_datamodule", "build_test_loader"]
