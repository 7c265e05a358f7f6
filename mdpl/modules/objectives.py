"""Per-task losses: MM-IMDb is multi-label (BCE with logits), Food-101 and Hateful Memes are single-label (CE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TASKS = ("mmimdb", "food101", "hatememes")
# dataset name (config["datasets"]) -> task (loss_names key)
DATASET_TASK = {"mmimdb": "mmimdb", "Food101": "food101", "Hatefull_Memes": "hatememes"}


def task_labels(task: str, label: Tensor | list, device: torch.device) -> Tensor:
    """Batch labels as the loss wants them: float multi-hot B x C for mmimdb, long B otherwise."""
    if task == "mmimdb":
        return torch.as_tensor(label, device=device).float()
    return torch.as_tensor(label, device=device).long()


def task_loss(task: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Loss in at least fp32 (official losses run in fp32 under autocast)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if task == "mmimdb":
        if labels.shape != logits.shape:
            raise ValueError(f"mmimdb labels must be B x {logits.shape[1]} multi-hot, got {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if task in ("food101", "hatememes"):
        return F.cross_entropy(logits, labels.long())
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def compute_task(task: str, logits: Tensor, label: Tensor | list) -> dict[str, Tensor]:
    """{task}_loss, {task}_logits, {task}_labels for one active task."""
    labels = task_labels(task, label, logits.device)
    return {f"{task}_loss": task_loss(task, logits, labels), f"{task}_logits": logits, f"{task}_labels": labels}
