"""The LightningDataModule for config["datasets"] (REFERENCE §3-§4; see DATA.md).

Loaders are plain torch DataLoaders: train shuffles, val and test do not (official val shuffled,
REFERENCE §12.9). Under DDP, Lightning swaps in a DistributedSampler (use_distributed_sampler default).
"""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from mdpl.datamodules.collate import Collator
from mdpl.datasets import SPLITS, build_dataset, missing_table
from mdpl.tokenizer import get_tokenizer


def apply_test_overrides(config: dict) -> None:
    """test_ratio / test_type replace the val and test missing settings (never train), in place, as
    officially, so the run's hparams record them."""
    if config["test_ratio"] is not None:
        config["missing_ratio"]["val"] = config["missing_ratio"]["test"] = config["test_ratio"]
    if config["test_type"] is not None:
        config["missing_type"]["val"] = config["missing_type"]["test"] = config["test_type"]


def build_collator(config: dict) -> Collator:
    mlm = config["loss_names"].get("mlm", 0) > 0
    return Collator(
        get_tokenizer(config["tokenizer"]), config["max_text_len"], config["mlm_prob"] if mlm else None,
        config["whole_word_masking"],
    )  # fmt: skip


class MissingDataModule(pl.LightningDataModule):
    """Train/val/test datasets of every config["datasets"] entry (concatenated when several, as the
    official MTDataModule). setup() builds them once, dataset by dataset in train, val, test order, which is
    the order the official global-RNG table draws depend on."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        if not config["per_gpu_batchsize"] or config["per_gpu_batchsize"] < 1:
            raise ValueError(f"per_gpu_batchsize must be set to a positive int, got {config['per_gpu_batchsize']!r}")
        apply_test_overrides(config)
        self.config = config
        self.datasets: dict[str, Dataset] = {}
        self.collate = build_collator(config)

    def prepare_data(self) -> None:
        # Lightning runs this on local rank 0 alone, before any setup(): the tables are drawn here in the
        # official order, so every rank then loads what a single process would have drawn. (A rank that
        # found, say, the train table already written would skip that draw and draw val and test from
        # another point of the global `random` stream.)
        for name in self.config["datasets"]:
            for split in SPLITS:
                missing_table(self.config, split, name)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        per_split: dict[str, list[Dataset]] = {s: [] for s in SPLITS}
        for name in self.config["datasets"]:
            for split in SPLITS:
                per_split[split].append(build_dataset(self.config, split, name))
        self.datasets = {s: d[0] if len(d) == 1 else ConcatDataset(d) for s, d in per_split.items()}

    def _loader(self, split: str) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            self.datasets[split],
            batch_size=self.config["per_gpu_batchsize"],
            shuffle=split == "train",
            num_workers=self.config["num_workers"],
            pin_memory=torch.cuda.is_available(),
            collate_fn=self.collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def build_datamodule(config: dict) -> MissingDataModule:
    """The datamodule for config["datasets"]; note that it applies test_ratio/test_type to `config`."""
    return MissingDataModule(config)


def build_test_loader(config: dict, ratio: float, missing_type: str) -> DataLoader:
    """A test loader for another (ratio, type) setting, without touching `config` or any model.

    It runs the whole official setup on a copy with test_ratio/test_type set (train and val tables are
    loaded or drawn first), so with table_draw="official" the caller seeds `random` as a run would
    (pl.seed_everything(config["seed"])) to get the official test table of a fresh run with these overrides.
    """
    cfg = copy.deepcopy(dict(config))
    cfg["test_ratio"], cfg["test_type"] = ratio, missing_type
    dm = build_datamodule(cfg)
    dm.setup("test")
    return dm.test_dataloader()


__all__ = [
    "Collator", "MissingDataModule", "apply_test_overrides", "build_collator", "build_datamodule", "build_test_loader"
]  # fmt: skip
