"""Exact resume: a fit resumed from any last.ckpt continues as the interrupted fit would have, bit for bit.

Lightning restores weights, optimiser, schedule and loop counters. `ExactResume` (a callback: its state is saved
in every checkpoint and restored through Lightning's public callback API) adds the rest, for each process:
- how many batches of the current epoch were trained: the train sampler skips them (inside an epoch);
- the global RNG states (dropout, patch_order="random", random transforms) and the gradients accumulated so far
  inside an accumulation window, put back when training starts (Lightning zeroes gradients after restoring);
- the train metrics of the epoch so far (torchmetrics' public metric_state / merge_state);
- the rows metrics.csv held, so the resumed run continues that file (`MetricsCSV`) instead of a new one.
Everything it saves is tensors and plain containers, so checkpoints stay loadable with weights_only=True.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from mdpl.errors import CheckpointError
from mdpl.files import atomic_path
from mdpl.model.config import ModelConfig
from mdpl.model.model import PromptedModel
from mdpl.model.weights import IGNORED_ON_LOAD
from mdpl.train.settings import INFERENCE_OPTIONS, Settings, model_config, resolve


def rng_states() -> dict:
    """Python, NumPy, torch CPU and (when in use) CUDA RNG states as tensors and plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class MetricsCSV(Logger):
    """metrics.csv in the run folder: one row per logged step, all rows written at every save (atomically).
    A resumed run keeps the first `keep_rows` rows of an existing file (those logged up to its checkpoint)."""

    def __init__(self, folder: Path, keep_rows: int | None = None) -> None:
        super().__init__()
        self.folder, self.rows = folder, []
        path = folder / "metrics.csv"
        if keep_rows is not None and path.is_file():
            with open(path, newline="") as f:
                self.rows = list(csv.DictReader(f))[:keep_rows]

    @property
    def name(self) -> str:
        return self.folder.parent.name

    @property
    def version(self) -> str:
        return self.folder.name

    @property
    def log_dir(self) -> str:
        return str(self.folder)

    @property
    def save_dir(self) -> str:
        """What Trainer.log_dir reports for a first logger that is not Lightning's CSV or TensorBoard one."""
        return str(self.folder)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # TensorBoard's logger writes hparams.yaml in the same folder

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {k: float(v) for k, v in metrics.items()}
        self.rows.append({**row, "step": step if step is not None else len(self.rows)})
        # Lightning calls save() right after each log_metrics: every row is on disk before the next step

    @rank_zero_only
    def save(self) -> None:
        keys = sorted({k for row in self.rows for k in row})
        os.makedirs(self.folder, exist_ok=True)
        with atomic_path(self.folder / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)


class ExactResume(pl.Callback):
    def __init__(self, metrics_csv: MetricsCSV | None = None) -> None:
        self.metrics_csv = metrics_csv
        self.batches = 0  # batches of the current epoch taken by the training loop
        self.loaded: dict | None = None

    @property
    def state_key(self) -> str:
        return "ExactResume"

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.batches = 0  # (not called for the epoch a resume continues inside)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self.batches = batch_idx + 1

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Restore what Lightning does not keep: after Lightning restored its loops and zeroed the gradients,
        before the first batch (and before the loop sets the sampler's epoch, which keeps a skip of that epoch)."""
        if self.loaded is None:
            return
        ranks = self.loaded["ranks"]
        state = ranks[trainer.global_rank] if len(ranks) == trainer.world_size else ranks[0]
        set_rng_states(state["rng"])
        params = dict(module.named_parameters())
        for name, grad in state["grads"].items():  # a checkpoint inside an accumulation window
            params[name].grad = grad.to(device=params[name].device, dtype=params[name].dtype)
        if self.loaded["epoch"] != trainer.current_epoch:
            return
        # the epoch's train metrics so far: also for a checkpoint of the validation after the epoch's last batch,
        # whose on_train_epoch_end (that logs them) Lightning runs when resuming from it
        module.task_metrics.merge_states("train", state["train_metrics"])
        if self.loaded["batches"] < trainer.num_training_batches:  # inside: continue after the batches trained
            sampler = trainer.train_dataloader.sampler
            sampler.set_epoch(trainer.current_epoch)
            sampler.skip_batches = self.batches = self.loaded["batches"]

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.loaded = None

    def state_dict(self) -> dict:
        """Called on every process when a checkpoint is written (the file, by rank 0, keeps them all)."""
        trainer, module = self._trainer, self._module
        grads = {n: p.grad.detach().cpu().clone() for n, p in module.named_parameters()
                 if p.requires_grad and p.grad is not None}  # fmt: skip
        local = {"rng": rng_states(), "grads": grads, "train_metrics": module.task_metrics.states("train")}
        ranks = [local]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, local)
        rows = len(self.metrics_csv.rows) if self.metrics_csv is not None else None
        return {"epoch": trainer.current_epoch, "batches": self.batches, "ranks": ranks, "metrics_rows": rows}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._module = trainer, module


def _describe(cfg: ModelConfig) -> str:
    return f"task(s) {list(cfg.tasks)}, backbone={cfg.backbone!r}, prompt_method={cfg.prompt_method!r}"


def check_resume(settings: Settings, model: PromptedModel, checkpoint: object, path: str) -> int | None:
    """resume_from must be a checkpoint of a Lightning fit of this very model: its saved config's model keys
    (inference options aside) and its weights' names and shapes must be those of the configured model. A refusal
    names the file, what it was trained for and what the configuration asks for. Returns the rows metrics.csv
    held when it was written (None: not recorded)."""
    source = f"resume_from={path!r}"
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("loops"), dict):
        raise CheckpointError(f"{source}: not a checkpoint of a Lightning fit (no training loop state); to start a "
                              "new fit from its weights use load_path")  # fmt: skip
    saved = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    wanted = settings.model
    if saved:
        trained = model_config(resolve(saved))
        differ = [f.name for f in fields(ModelConfig) if f.name not in INFERENCE_OPTIONS
                  and getattr(trained, f.name) != getattr(wanted, f.name)]  # fmt: skip
        if differ:
            shown = ", ".join(f"{k}={getattr(trained, k)!r} (config: {getattr(wanted, k)!r})" for k in differ[:6])
            raise CheckpointError(f"{source} was trained for {_describe(trained)}, but the config asks for "
                                  f"{_describe(wanted)}: {shown}; resume with the run's own config")  # fmt: skip
    own, held = model.official_state_dict(), checkpoint.get("state_dict") or {}
    held = {k: v for k, v in held.items() if k not in IGNORED_ON_LOAD}
    bad = sorted(set(own) ^ set(held)) + [k for k in own if k in held and own[k].shape != held[k].shape]
    if bad:
        raise CheckpointError(f"{source} holds other weights than the configured model ({_describe(wanted)}): "
                              f"{bad[:4]}{' ...' if len(bad) > 4 else ''} differ")  # fmt: skip
    rows = (checkpoint.get("callbacks") or {}).get("ExactResume", {}).get("metrics_rows")
    return rows if isinstance(rows, int) else None
