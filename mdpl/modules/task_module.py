"""TaskModule: the Lightning module that trains and evaluates a PromptedViLT.

It owns the losses, the epoch metrics, the optimiser and schedule and the non-finite-loss stop; the model
it wraps owns the computation. Its hyper-parameters are the resolved sacred config, so
`TaskModule.load_from_checkpoint(path)` rebuilds the model without reading any other file. The model's
parts are registered on the module itself, so checkpoint keys are the model's own (official) names.
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from mdpl.gadgets.metrics import TaskMetrics
from mdpl.modules.frozen_cast import FrozenCastCallback
from mdpl.modules.model import PromptedViLT, compile_model, inline_module
from mdpl.modules.objectives import compute_task
from mdpl.modules.optim import build_optimizer, build_scheduler
from mdpl.settings import Settings

RESUME_KEY = "mdpl_resume"  # the checkpoint entry TaskModule adds for an exact resume (see _resume_state)


def _to_cpu(value):
    return [v.detach().cpu().clone() for v in value] if isinstance(value, list) else value.detach().cpu().clone()


def _rng_states() -> dict:
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


def _set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class TaskModule(pl.LightningModule):
    def __init__(self, config: dict, model: PromptedViLT | None = None) -> None:
        """config: the sacred config (stored as hyper-parameters); model: a built model with its weights
        (from mdpl.modules.factory), or None to build one from config (checkpoint loading)."""
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.settings = Settings.from_config(config)
        inline_module(self, "model", model if model is not None else PromptedViLT(self.settings.model))
        if self.settings.run.torch_compile:
            compile_model(self.model)
        cfg = self.settings.model
        self.task_metrics = TaskMetrics({t: cfg.num_classes(t) for t in cfg.tasks})  # not saved in checkpoints
        self._first_bad: Tensor | None = None  # (loss, epoch, global step) of the first non-finite loss
        self._resume: dict | None = None  # RESUME_KEY of the checkpoint a fit resumes from, applied at train start

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """The model's outputs plus {task}_loss and {task}_labels for each task."""
        out = self.model(batch)
        for task in self.settings.model.tasks:
            out.update(compute_task(task, out[f"{task}_logits"], batch["label"]))
        return out

    def _shared_step(self, batch: dict, phase: str) -> Tensor:
        out = self(batch)
        self.task_metrics.update(phase, out)
        return sum(out[f"{task}_loss"] for task in self.settings.model.tasks)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        # Non-finite losses are noted on the device (no host sync per step) and checked when the logged values
        # are read anyway, before every validation and before any checkpoint is written (see _stop_if_nonfinite).
        bad = ~torch.isfinite(loss.detach())
        if self._first_bad is None:
            self._first_bad = torch.full((3,), -1.0, device=loss.device)
        note = torch.stack(
            [
                loss.detach().float(),
                loss.new_tensor(self.current_epoch, dtype=torch.float),
                loss.new_tensor(self.global_step, dtype=torch.float),
            ]
        )
        self._first_bad = torch.where(bad & (self._first_bad[2] < 0), note, self._first_bad)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            self._stop_if_nonfinite()

    def on_validation_start(self) -> None:
        self._stop_if_nonfinite()

    def configure_callbacks(self) -> list[pl.Callback]:
        """Under "16-mixed" / "bf16-mixed" the frozen backbone's matmul weights are held in the autocast dtype
        for the duration of fit / validate / test / predict (no per-step re-cast; checkpoints keep the fp32
        values; fp32 again after, also after an exception): see mdpl.modules.frozen_cast."""
        return [FrozenCastCallback()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._stop_if_nonfinite()
        checkpoint[RESUME_KEY] = self._resume_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume = checkpoint.get(RESUME_KEY)

    def on_train_start(self) -> None:
        """A resumed fit continues where the checkpoint was written: Lightning restored weights, optimiser,
        schedule, loops and the train loader's position (mdpl.datamodules.ResumableLoader); this restores what
        Lightning does not keep. Here, not in on_load_checkpoint: Lightning zeroes the gradients after restoring,
        and the sanity check and loader creation come in between."""
        resume, self._resume = self._resume, None
        if not resume:
            return
        ranks = resume["ranks"]
        state = ranks[self.global_rank] if len(ranks) == self.trainer.world_size else ranks[0]
        _set_rng_states(state["rng"])
        params = dict(self.named_parameters())
        for name, grad in state["grads"].items():  # a checkpoint inside an accumulation window
            params[name].grad = grad.to(device=params[name].device, dtype=params[name].dtype)
        if state["epoch"] == self.current_epoch:  # inside the epoch: its train metrics so far (else a new epoch)
            for key, states in state["train_metrics"].items():
                task, name = key.split("/")
                metric = self.task_metrics.phases["train_metrics"][task][name]
                for attr, value in states.items():
                    if attr == "_update_count":
                        metric._update_count = value
                    elif isinstance(value, list):
                        setattr(metric, attr, [v.to(self.device) for v in value])
                    else:
                        setattr(metric, attr, value.to(self.device))
                metric._computed = None

    def _resume_state(self) -> dict:
        """What an exact resume needs beyond Lightning's own checkpoint content, for each process: the global
        RNG states (dropout in train mode, patch_order="random", data transforms), the gradients accumulated
        so far inside an accumulation window, and the train metrics of the epoch so far. Only tensors and
        plain containers, so the checkpoint stays loadable with weights_only=True."""
        local = {
            "rng": _rng_states(),
            "grads": {
                n: p.grad.detach().cpu().clone()
                for n, p in self.named_parameters()
                if p.requires_grad and p.grad is not None
            },
            "train_metrics": {
                f"{task}/{name}": {
                    **{a: _to_cpu(v) for a, v in metric.metric_state.items()},
                    "_update_count": metric.update_count,
                }
                for task, metrics in self.task_metrics.phases["train_metrics"].items()
                for name, metric in metrics.items()
            },
            "epoch": self.current_epoch,
        }
        ranks = [local]
        world = self.trainer.world_size
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * world  # every process calls this hook: the file (written by rank 0) keeps them all
            torch.distributed.all_gather_object(ranks, local)
        return {"ranks": ranks}

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

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def _log_epoch(self, phase: str) -> None:
        if not self.task_metrics.has_samples(phase):
            return  # e.g. a run resumed at the end of an epoch: nothing to average, so nothing is logged
        values = self.task_metrics.compute(phase)  # synced across processes by torchmetrics
        self.task_metrics.reset(phase)
        # every process already holds the same values (the checkpoint callback reads them on each);
        # sync_dist only averages identical numbers, and keeps Lightning from warning under DDP
        the_metric = f"{phase}/the_metric"
        self.log_dict({k: v for k, v in values.items() if k != the_metric}, sync_dist=True)
        self.log(the_metric, values[the_metric], prog_bar=phase != "train", sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> dict:
        optim = self.settings.optim
        max_steps = optim.max_steps
        if max_steps is None:  # official: len(train loader) * max_epoch // accumulation
            _ = self.trainer.estimated_stepping_batches  # makes Lightning size the train loader
            max_steps = self.trainer.num_training_batches * optim.max_epoch // self.trainer.accumulate_grad_batches
        optimizer = build_optimizer(self, optim)
        scheduler = build_scheduler(optimizer, optim, max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
