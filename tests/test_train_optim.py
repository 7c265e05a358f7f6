"""The official optimiser (transformers' old AdamW), parameter groups and schedule
(docs/official-behaviour.md#optimiser-and-schedule)."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from mdpl.config import make_config
from mdpl.errors import ConfigError
from mdpl.model.model import official_name
from mdpl.train.optim import AdamW, build_optimizer, build_scheduler, lr_factor, param_groups
from mdpl.train.settings import OptimConfig, Settings


def optim(**updates) -> OptimConfig:
    """The food101 fine-tuning optimiser settings with `updates` (validated by Settings)."""
    config = make_config("task_finetune_food101", per_gpu_batchsize=4, **updates)
    return Settings.from_config(config).optim


def test_adamw_matches_hand_computation_with_decay_after_the_adam_step():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.98, 1e-8, 0.5
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    x, m, v = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.0, 0.0
    for t, g in enumerate([torch.tensor([0.5, -1.0]), torch.tensor([-0.25, 2.0])], start=1):
        p.grad = g.clone()
        opt.step()
        g = g.double()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        x = x - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps)
        x = x - lr * wd * x  # decay on the updated value
        assert torch.allclose(p.detach().double(), x, atol=1e-6)
    # torch's AdamW decays before the step: the results differ
    q = nn.Parameter(torch.tensor([1.0, -2.0]))
    ref = torch.optim.AdamW([q], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for g in [torch.tensor([0.5, -1.0]), torch.tensor([-0.25, 2.0])]:
        q.grad = g.clone()
        ref.step()
    assert not torch.allclose(p, q, atol=1e-4)


class Tiny(nn.Module):
    """PromptedModel's layout: backbone (frozen transformer, trainable pooler), prompts, task heads."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.transformer = nn.Module()
        self.backbone.transformer.norm = nn.LayerNorm(4)
        self.backbone.transformer.proj = nn.Linear(4, 4)
        self.backbone.transformer.requires_grad_(False)
        self.backbone.pooler = nn.Linear(4, 4)
        self.prompts = nn.Module()
        self.prompts.shared_missing_t = nn.ParameterList([nn.Parameter(torch.zeros(2, 4))])
        self.food101_classifier = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3))


def _names(model, group):
    """The group's parameters under their official (file) names, the names the rules read."""
    ids = {id(p) for p in group["params"]}
    return sorted(official_name(n) for n, p in model.named_parameters() if id(p) in ids)


def test_param_groups_follow_official_name_rules():
    model = Tiny()
    groups = param_groups(model, optim(learning_rate=1e-3, weight_decay=0.02, lr_mult=10))
    decay, decay_head, no_decay, no_decay_head = groups
    assert _names(model, decay) == ["pooler.weight", "shared_missing_t.0"]
    # the head LayerNorm weight "...classifier.1.weight" does not match the no-decay names: decayed
    assert _names(model, decay_head) == [
        "food101_classifier.0.weight",
        "food101_classifier.1.weight",
        "food101_classifier.3.weight",
    ]
    assert _names(model, no_decay) == ["pooler.bias"]
    assert _names(model, no_decay_head) == [
        "food101_classifier.0.bias",
        "food101_classifier.1.bias",
        "food101_classifier.3.bias",
    ]
    assert [g["weight_decay"] for g in groups] == [0.02, 0.02, 0.0, 0.0]
    assert [g["lr"] for g in groups] == [1e-3, 1e-2, 1e-3, 1e-2]
    # frozen backbone parameters are in no group
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_build_optimizer_kinds_and_error():
    cfg = optim(learning_rate=1e-3, weight_decay=0.01, lr_mult=1, optim_type="adamw")
    opt = build_optimizer(Tiny(), cfg)
    assert isinstance(opt, AdamW) and opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8
    assert isinstance(build_optimizer(Tiny(), dataclasses.replace(cfg, optim_type="sgd")), torch.optim.SGD)
    with pytest.raises(ValueError, match="optim_type='lamb'"):
        build_optimizer(Tiny(), dataclasses.replace(cfg, optim_type="lamb"))
    with pytest.raises(ConfigError, match="optim_type='lamb'"):  # refused by the settings already
        optim(optim_type="lamb")


def test_polynomial_schedule_with_fractional_warmup():
    p = nn.Parameter(torch.zeros(1))
    opt = AdamW([p], lr=1.0)
    cfg = optim(warmup_steps=0.2, decay_power=1, end_lr=0, learning_rate=1.0)
    sched = build_scheduler(opt, cfg, max_steps=10)  # warmup int(0.2 * 10) = 2
    lrs = []
    for _ in range(13):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.0, 0.5, 1.0, 0.875])
    assert lrs[10:] == pytest.approx([0.0, 0.0, 0.0])  # stays 0 past max_steps


def test_cosine_and_integer_warmup():
    assert lr_factor(5, 10, 110, "cosine") == pytest.approx(0.5)
    assert lr_factor(60, 10, 110, "cosine") == pytest.approx(0.5)
    assert lr_factor(110, 10, 110, "cosine") == pytest.approx(0.0)
    assert lr_factor(200, 10, 110, "cosine", hold=True) == pytest.approx(0.0)
    assert lr_factor(60, 10, 110, 2) == pytest.approx(0.25)
    assert lr_factor(110, 10, 110, 1, end_ratio=0.1) == pytest.approx(0.1)


def test_past_the_horizon_the_official_cosine_rises_again_and_hold_keeps_it_at_zero():
    """An epoch's last partial accumulation window steps once more than the horizon counts (22 steps, 21 planned):
    officially (transformers' schedules) the cosine goes on along its curve, the polynomial stays at its end."""
    assert lr_factor(22, 2, 21, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 19)))
    assert lr_factor(22, 2, 21, "cosine") > 0
    assert lr_factor(22, 2, 21, "cosine", hold=True) == 0.0
    assert lr_factor(22, 2, 21, 1, end_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="lr_past_horizon='later'"):
        Settings.from_config(make_config("task_finetune_food101", per_gpu_batchsize=1, lr_past_horizon="later"))
