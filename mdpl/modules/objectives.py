"""Per-task losses: multi-label tasks (MM-IMDb) use BCE with logits, single-label ones cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mdpl.tasks import TASKS


def task_labels(task: str, label: Tensor | list, device: torch.device) -> Tensor:
    """Batch labels as the loss wants them: float multi-hot B x C (multi-label), long B otherwise."""
    dtype = torch.float32 if TASKS[task].multilabel else torch.long
    return torch.as_tensor(label, device=device).to(dtype)


def task_loss(task: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Loss in at least fp32 (official losses run in fp32 under autocast)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if TASKS[task].multilabel:
        if labels.shape != logits.shape:
            raise ValueError(f"{task} labels must be B x {logits.shape[1]} multi-hot, got {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return F.cross_entropy(logits, labels.long())


def compute_task(task: str, logits: Tensor, label: Tensor | list) -> dict[str, Tensor]:
    """{task}_loss, {task}_logits, {task}_labels for one task."""
    labels = task_labels(task, label, logits.device)
    return {f"{task}_loss": task_loss(task, logits, labels), f"{task}_logits": logits, f"{task}_labels": labels}
