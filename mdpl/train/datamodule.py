"""The LightningDataModule of a fit: train and val loaders over settings.data.datasets (see DATA.md).

Samplers are explicit (the Trainer runs with use_distributed_sampler=False), each process taking its share:
- train: `EpochSampler`, a permutation drawn from (seed, epoch), as torch's DistributedSampler; seed 0 whatever
  the run seed (official, train_order="official") or the run seed (train_order="seeded"). After a resume inside
  an epoch it skips the batches the interrupted run trained on (mdpl.train.resume).
- val: one fixed permutation (DistributedSampler(shuffle=True) with seed 0, its epoch never set), the same in
  every run and every validation, as officially.
Missing tables are drawn on local rank 0 (prepare_data) before any process builds its datasets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from mdpl.data.collate import Collator
from mdpl.data.datasets import DataConfig, Splits
from mdpl.data.tasks import SPLITS
from mdpl.data.tokenizers import TextTokenizer


def usable_workers(requested: int) -> int:
    """num_workers, reduced (with one line saying so, once) to the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > cpus:
        if requested not in _REDUCED:
            print(f"num_workers={requested} reduced to {cpus}: this machine has {cpus} CPUs for this process")
            _REDUCED.add(requested)
        return cpus
    return requested


_REDUCED: set[int] = set()


class EpochSampler(DistributedSampler):
    """The train order: a permutation drawn from seed + epoch alone (torch's DistributedSampler), this process's
    share of it, minus the first `skip_batches` batches after a resume inside the epoch. len() stays the whole
    epoch's: Lightning counts the skipped batches as done."""

    def __init__(self, dataset: Dataset, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip_batches = 0  # a skip belongs to the epoch it was set for
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip_batches * self.batch_size :])


class FixedPermutation(DistributedSampler):
    """The official val order: DistributedSampler(shuffle=True, seed=0) whose epoch is never set."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=0, drop_last=False)

    def set_epoch(self, epoch: int) -> None:  # Lightning sets it on every loader; the official loop did not
        pass


class TrainLoader(DataLoader):
    """The train DataLoader; worker seeds come from seed + epoch, so creating an iterator draws nothing from the
    global torch RNG (a resumed run creates it at another moment than an uninterrupted one)."""

    sampler: EpochSampler

    def __iter__(self):
        self.generator.manual_seed(self.sampler.seed + self.sampler.epoch)
        return super().__iter__()


def loader(dataset: Dataset, cfg: DataConfig, sampler, collate: Collator, cls: type = DataLoader, **kw) -> DataLoader:
    workers = usable_workers(cfg.num_workers)
    pin = torch.cuda.is_available()
    return cls(dataset, batch_size=cfg.per_gpu_batchsize, sampler=sampler, num_workers=workers, pin_memory=pin,
               persistent_workers=workers > 0, collate_fn=collate, **kw)  # fmt: skip


class MissingDataModule(pl.LightningDataModule):
    """Train and val datasets of every configured dataset (concatenated when several, as the official
    MTDataModule), each split with its missing table."""

    def __init__(self, splits: Splits) -> None:
        super().__init__()
        self.splits, self.cfg = splits, splits.cfg
        self.collate = Collator(TextTokenizer(self.cfg.tokenizer, self.cfg.max_text_len))
        self.datasets: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        # Lightning runs this on local rank 0 alone, before any setup(): every rank then loads the tables a
        # single process would have drawn (a rank that found some already written would draw others).
        self.splits.tables_for()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        tables = self.splits.tables_for()  # loaded: prepare_data wrote them
        for split in SPLITS:
            parts = [self.splits.dataset(split, d, [tables[d, split]]) for d in self.cfg.datasets]
            self.datasets[split] = parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def _share(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> TrainLoader:
        replicas, rank = self._share()
        seed = 0 if self.cfg.train_order == "official" else self.cfg.seed
        sampler = EpochSampler(self.datasets["train"], seed, self.cfg.per_gpu_batchsize, replicas, rank)
        return loader(self.datasets["train"], self.cfg, sampler, self.collate, TrainLoader, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        replicas, rank = self._share()
        return loader(self.datasets["val"], self.cfg, FixedPermutation(self.datasets["val"], replicas, rank),
                      self.collate)  # fmt: skip
