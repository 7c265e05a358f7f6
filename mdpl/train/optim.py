"""Optimiser, parameter groups and learning-rate schedule of the official code
(docs/official-behaviour.md#optimiser-and-schedule).

AdamW here is transformers' old AdamW, not torch.optim.AdamW: the weight decay p -= lr*wd*p is applied
*after* the Adam step (so to the already-updated p), with bias correction folded into the step size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mdpl.data.tasks import TASKS
from mdpl.model.model import official_name
from mdpl.train.settings import OptimConfig

# official name fragments: parameters whose name contains one of these get no weight decay ...
NO_DECAY = (
    "bias",
    "LayerNorm.bias",
    "LayerNorm.weight",
    "norm.bias",
    "norm.weight",
    "norm1.bias",
    "norm1.weight",
    "norm2.bias",
    "norm2.weight",
)
# ... and these are the heads, trained at lr * lr_mult (the head LN "...classifier.1.weight" is decayed)
HEAD_NAMES = tuple(t.head for t in TASKS.values())


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay applied after the Adam update (transformers.AdamW, correct_bias=True):

    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
    p -= lr * sqrt(1-b2^t) / (1-b1^t) * m / (sqrt(v) + eps)
    p -= lr * wd * p
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or weight_decay < 0:
            raise ValueError(f"AdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
                if wd > 0:
                    p.add_(p, alpha=-lr * wd)
        return loss


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """Four groups (decay or not x head or not) over the trainable parameters, as official."""
    lr, wd = optim.learning_rate, optim.weight_decay
    groups: dict[tuple[bool, bool], list] = {(d, h): [] for d in (True, False) for h in (False, True)}
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen backbone: official groups hold it but it never has a gradient
            continue
        name = official_name(name)  # the rules read the official names
        decay = not any(nd in name for nd in NO_DECAY)
        head = any(hn in name for hn in HEAD_NAMES)
        groups[(decay, head)].append(p)
    return [
        {"params": params, "weight_decay": wd if decay else 0.0, "lr": lr * optim.lr_mult if head else lr}
        for (decay, head), params in groups.items()
    ]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    groups, lr = param_groups(model, optim), optim.learning_rate
    kind = optim.optim_type
    if kind == "adamw":
        return AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-8)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"optim_type={kind!r}: expected 'adamw', 'adam' or 'sgd'")


def warmup_steps(optim: OptimConfig, max_steps: int) -> int:
    """warmup_steps: an int is a step count, a float a fraction of max_steps (official)."""
    w = optim.warmup_steps
    return int(w * max_steps) if isinstance(w, float) else int(w)


def lr_factor(
    step: int, warmup: int, max_steps: int, decay_power: float | str, end_ratio: float = 0.0, hold: bool = False
) -> float:
    """Multiplier of each group's lr after `step` optimizer steps: linear warmup, then polynomial decay (decay_power a
    number) to end_ratio or half-cosine decay to 0 (decay_power "cosine"). Past max_steps (an epoch's last partial
    accumulation window can step once more) the polynomial stays at end_ratio and the cosine goes on along its
    curve, rising again, as transformers' schedules do (official); `hold` keeps the cosine at 0 there too."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, max_steps - warmup)
    if decay_power == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (min(progress, 1.0) if hold else progress))))
    return (1 - end_ratio) * (1 - min(progress, 1.0)) ** float(decay_power) + end_ratio


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int) -> LambdaLR:
    """Per-optimizer-step schedule (step it after every optimizer step)."""
    power = optim.decay_power
    warmup = warmup_steps(optim, max_steps)
    end_ratio = optim.end_lr / optim.learning_rate if optim.learning_rate else 0.0
    hold = optim.lr_past_horizon == "hold"
    return LambdaLR(optimizer, lambda step: lr_factor(step, warmup, max_steps, power, end_ratio, hold))
