"""The LightningDataModule for settings.data.datasets (see DATA.md).

Val and test loaders are plain torch DataLoaders, not shuffled (official val shuffled; see
docs/official-behaviour.md#official-defects-and-our-fixes); under DDP Lightning shards them with its
DistributedSampler. The train loader is a `ResumableLoader`: its order depends only on (seed, epoch) and this
process's share under DDP (`EpochSampler`), and it is resumable inside an epoch: Lightning saves its
`state_dict()` in every checkpoint and, resuming from one written inside an epoch, loads it so that the loader
skips the batches the interrupted run already trained on (see DATA.md, "Guarantees on bad input and faults").
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from mdpl.datamodules.collate import Collator
from mdpl.datasets import SPLITS, build_dataset, missing_table
from mdpl.settings import Settings
from mdpl.tokenizer import get_tokenizer


def usable_workers(requested: int) -> int:
    """num_workers, reduced (with one line saying so) to the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > cpus:
        if requested not in _REDUCED:
            print(
                f"num_workers={requested} reduced to {cpus}: this machine has {cpus} CPUs for this process", flush=True
            )
            _REDUCED.add(requested)
        return cpus
    return requested


_REDUCED: set[int] = set()  # said once per process


def build_collator(settings: Settings) -> Collator:
    return Collator(get_tokenizer(settings.model.tokenizer), settings.model.max_text_len)


class EpochSampler(DistributedSampler):
    """The train order: a permutation drawn from seed + epoch alone (torch's DistributedSampler), this process's
    share of it under DDP, minus the first `skip_batches` batches after a resume inside the epoch.

    Being a DistributedSampler, Lightning keeps it under DDP (it replaces only other samplers) and calls
    set_epoch at every epoch start. len() stays the whole epoch's, as Lightning counts the skipped batches as
    done."""

    def __init__(self, dataset: Dataset, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip_batches = 0  # a skip belongs to the epoch it was restored in
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip_batches * self.batch_size :])


class ResumableLoader(DataLoader):
    """The train DataLoader, with the state Lightning saves in checkpoints (`state_dict`/`load_state_dict`).

    `progress()` tells how many batches of the current epoch the training loop has taken (the trainer's batch
    progress: the loader itself cannot tell, since workers and Lightning fetch ahead). Worker seeds come from a
    generator seeded with seed + epoch, so creating the iterator draws nothing from the global torch RNG (a
    resumed run creates it at another moment than an uninterrupted one)."""

    sampler: EpochSampler

    def __init__(self, *args, progress: Callable[[], int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def __iter__(self):
        self.generator.manual_seed(self.sampler.seed + self.sampler.epoch)
        return super().__iter__()

    def state_dict(self) -> dict:
        s = self.sampler
        return {
            "epoch": s.epoch,
            "batches": self.progress() if self.progress is not None else 0,
            "seed": s.seed,
            "num_replicas": s.num_replicas,
            "samples": len(s.dataset),
            "batch_size": s.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        s = self.sampler
        saved = {k: state.get(k) for k in ("seed", "num_replicas", "samples", "batch_size")}
        now = {"seed": s.seed, "num_replicas": s.num_replicas, "samples": len(s.dataset), "batch_size": s.batch_size}
        if saved != now:  # Lightning counts the saved number of batches as done: skip as many, in another order
            warnings.warn(
                f"resume_from: the checkpoint's train loader ({saved}) differs from this run's ({now}): the "
                "rest of the epoch is drawn in another order, so the run is not the one interrupted "
                "(resume with its seed, data, per_gpu_batchsize and devices to continue it exactly)",
                stacklevel=2,
            )
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved by the validation at the end of the epoch: the next one starts afresh
            epoch, batches = epoch + 1, 0
        s.set_epoch(epoch)
        s.skip_batches = batches


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
        self._train: ResumableLoader | None = None
        self._resume: dict | None = None  # the train loader state of the checkpoint a fit resumes from

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

    def _loader(self, split: str, cls: type[DataLoader] = DataLoader, **kwargs) -> DataLoader:
        if not self.datasets:
            raise RuntimeError("call setup() before asking for a dataloader")
        return cls(
            self.datasets[split],
            batch_size=self.settings.data.per_gpu_batchsize,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,  # validation every val_check_interval reuses them
            collate_fn=self.collate,
            **kwargs,
        )

    def train_dataloader(self) -> ResumableLoader:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(
            self.datasets["train"],
            self.settings.data.seed,
            self.settings.data.per_gpu_batchsize,
            num_replicas=replicas,
            rank=rank,
        )
        progress = None
        if trainer is not None:

            def progress() -> int:  # batches of this epoch the training loop has taken (not those fetched ahead)
                return trainer.fit_loop.epoch_loop.batch_progress.current.ready

        loader = self._loader("train", ResumableLoader, sampler=sampler, generator=torch.Generator(), progress=progress)
        if self._resume is not None:  # the position saved in the checkpoint a fit resumes from
            loader.load_state_dict(self._resume)
            self._resume = None
        self._train = loader
        return loader

    def state_dict(self) -> dict:
        """Saved in checkpoints by Lightning: the train loader's position."""
        return {"train_loader": self._train.state_dict()} if self._train is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restored by Lightning before it asks for the train loader (`configure_optimizers` asks for it early,
        through trainer.estimated_stepping_batches, so Lightning never gives the loader its own saved state)."""
        self._resume = state.get("train_loader")

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


__all__ = [
    "Collator",
    "EpochSampler",
    "MissingDataModule",
    "ResumableLoader",
    "build_collator",
    "build_datamodule",
    "build_test_loader",
]
