"""TaskModule: the Lightning module that trains and validates a PromptedModel (`self.model`).

It owns the losses, the epoch metrics, the optimiser and schedule, and the non-finite-loss stop; the model owns
the computation. Its hyper-parameters are the resolved configuration, so `TaskModule.load_from_checkpoint(path)`
rebuilds the model without reading any other file. Checkpoints hold the model's official flat names
(`on_save_checkpoint` / `on_load_checkpoint` map them; see PromptedModel.official_state_dict).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from mdpl.data.tasks import TASKS
from mdpl.model.model import PromptedModel, compile_model
from mdpl.model.weights import IGNORED_ON_LOAD
from mdpl.train.metrics import TaskMetrics
from mdpl.train.optim import build_optimizer, build_scheduler
from mdpl.train.settings import Settings


def task_losses(tasks: tuple[str, ...], out: dict, label: Tensor) -> dict:
    """`out` plus {task}_loss and {task}_labels: BCE with logits for multi-label tasks (MM-IMDb), cross-entropy
    otherwise, in at least fp32 (official losses run in fp32 under autocast)."""
    out = dict(out)
    for task in tasks:
        logits = out[f"{task}_logits"]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if TASKS[task].multilabel:
            labels = label.float()  # float32 multi-hot whatever the model's dtype; the loss casts its own copy
            if labels.shape != logits.shape:
                raise ValueError(f"{task} labels must be B x {logits.shape[1]} multi-hot, got {tuple(labels.shape)}")
            loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        else:
            labels = label.long()
            loss = F.cross_entropy(logits, labels)
        out[f"{task}_loss"], out[f"{task}_labels"] = loss, labels
    return out


class TaskModule(pl.LightningModule):
    def __init__(self, config: dict, model: PromptedModel | None = None) -> None:
        """config: the configuration (stored as hyper-parameters); model: a built model with its weights (from
        mdpl.model.factory), or None to build one from config (checkpoint loading)."""
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.settings = Settings.from_config(config)
        self.model = model if model is not None else PromptedModel(self.settings.model)
        if self.settings.run.torch_compile:
            compile_model(self.model)
        cfg = self.settings.model
        self.task_metrics = TaskMetrics({t: cfg.num_classes(t) for t in cfg.tasks})  # not saved in checkpoints
        self._first_bad: Tensor | None = None  # (loss, epoch, global step) of the first non-finite loss

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """The model's outputs plus {task}_loss and {task}_labels for each task."""
        return task_losses(self.settings.model.tasks, self.model(batch), batch["label"])

    def _step(self, batch: dict, phase: str) -> Tensor:
        out = self(batch)
        self.task_metrics.update(phase, out)
        return sum(out[f"{task}_loss"] for task in self.settings.model.tasks)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        # Non-finite losses are noted on the device (no host sync per step) and checked when the logged values are
        # read anyway: every log_every_n_steps, before every validation and before any checkpoint is written.
        if self._first_bad is None:
            self._first_bad = torch.full((3,), -1.0, device=loss.device)
        note = torch.tensor([0.0, self.current_epoch, self.global_step], device=loss.device)
        note[0] = loss.detach().float()
        first = ~torch.isfinite(loss.detach()) & (self._first_bad[2] < 0)
        self._first_bad = torch.where(first, note, self._first_bad)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            self._stop_if_nonfinite()

    def on_validation_start(self) -> None:
        self._stop_if_nonfinite()

    def _stop_if_nonfinite(self) -> None:
        """Any process that saw a non-finite training loss stops all of them (one host sync)."""
        if self._first_bad is None:
            return
        first = self._first_bad.tolist()
        if self.trainer.strategy.reduce_boolean_decision(first[2] >= 0, all=False):
            where = f" at epoch {int(first[1])}, global step {int(first[2])}" if first[2] >= 0 else " elsewhere"
            raise FloatingPointError(
                f"training loss is {first[0]}{where}: training stopped; the checkpoints saved so far (last.ckpt and "
                "the best) are kept unchanged. Try a lower learning_rate or precision=32."
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._stop_if_nonfinite()
        own = {f"model.{k}" for k in self.model.state_dict()}
        model = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k in own}
        checkpoint["state_dict"] = {
            **{k: v for k, v in checkpoint["state_dict"].items() if k not in own},
            **{name: model[key] for key, name in zip(self.model.state_dict(), self.model.official_state_dict())},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        sd = {k: v for k, v in checkpoint["state_dict"].items() if k not in IGNORED_ON_LOAD}
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in self.model.from_official(sd).items()}

    def _log_epoch(self, phase: str) -> None:
        if not self.task_metrics.has_samples(phase):
            return  # e.g. a run resumed at the end of an epoch: nothing to average, so nothing is logged
        values = self.task_metrics.compute(phase)  # synced across processes by torchmetrics
        self.task_metrics.reset(phase)
        # every process holds the same values already; sync_dist only keeps Lightning from warning under DDP
        the_metric = f"{phase}/the_metric"
        self.log_dict({k: v for k, v in values.items() if k != the_metric}, sync_dist=True)
        self.log(the_metric, values[the_metric], prog_bar=phase != "train", sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def configure_optimizers(self) -> dict:
        optim = self.settings.optim
        max_steps = optim.max_steps
        if max_steps is None:  # official: len(train loader) * max_epoch // accumulation
            _ = self.trainer.estimated_stepping_batches  # makes Lightning size the train loader
            max_steps = self.trainer.num_training_batches * optim.max_epoch // self.trainer.accumulate_grad_batches
        optimizer = build_optimizer(self.model, optim)
        scheduler = build_scheduler(optimizer, optim, max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
