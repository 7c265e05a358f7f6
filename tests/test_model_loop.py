"""The one model loop (mdpl.model.model.run_blocks) with a test double of a two-tower backbone and of a prompt method:
what a new backbone or method provides is enough for prompts to be inserted before chosen layers of each tower,
keys and values to be prefixed, the pooled rows of each tower to feed one head, and pruning to stay exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mdpl.model import model as model_module
from mdpl.model.layers import Block
from mdpl.model.model import PromptedModel
from mdpl.model.prompts import PROMPT_METHODS
from mdpl.model.prompts.base import PromptMethod
from mdpl.model.stream import Side, Stream
from mdpl.train.module import task_losses
from mdpl.train.settings import Settings
from reference.common import make_batch, small_config

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoTowers(nn.Module):
    """Stream "text" (width 8, causal, pooled at its last real token) and stream "image" (width 12, pooled at its
    first token); the head reads (image, text)."""

    trainable = ("mix.",)

    def __init__(self, cfg) -> None:
        super().__init__()
        self.text_blocks = nn.ModuleList([Block(8, 2, eps=1e-5) for _ in range(3)])
        self.image_blocks = nn.ModuleList([Block(12, 3, eps=1e-5) for _ in range(3)])
        self.mix = nn.Linear(20, 20)

    layout = {"text": {"text": 8}, "image": {"image": 12}}

    def blocks(self, stream: str) -> nn.ModuleList:
        return self.text_blocks if stream == "text" else self.image_blocks

    def streams(self, batch: dict, generator=None) -> list[Stream]:
        mask = batch["text_masks"]
        text = Side("text", batch["text"], mask, pooled=mask.sum(1) - 1)
        image = Side("image", batch["image"], torch.ones_like(batch["image"][..., 0]).long(),
                     pooled=torch.zeros_like(mask[:, 0]))  # fmt: skip
        return [Stream("text", [text], causal=True), Stream("image", [image])]

    def norm(self, stream: str, x):
        return x

    def features(self, pooled: dict, missing_type):
        return self.mix(torch.cat([pooled["image"], pooled["text"]], dim=1))

    def head(self, num_classes: int) -> nn.Module:
        return nn.Linear(20, num_classes)


class TowerPrompts(PromptMethod):
    """Two prompt tokens in front of each tower before layer 0, the first replaced before layer 1; unprojected
    prefix keys and values in the image tower's layer 2."""

    def __init__(self, cfg, layout) -> None:
        super().__init__(cfg, layout)
        self.text_prompt = nn.Parameter(torch.randn(3, 2, 8))
        self.image_prompt = nn.Parameter(torch.randn(3, 2, 12))
        self.image_prefix = nn.Parameter(torch.randn(1, 12))

    def prepare(self, missing_type, streams) -> dict:
        return {"text": self.text_prompt[missing_type], "image": self.image_prompt[missing_type]}

    def edit_layers(self, stream: str) -> tuple[int, ...]:
        return (0, 1)

    def edit(self, stream: Stream, layer: int, state: dict) -> None:
        (side,) = stream.sides
        prompts = state[stream.name]
        side.region = [prompts] if layer == 0 else [prompts[:, :1], side.region[0][:, 1:]]

    def prefix_kv(self, stream: str, layer: int, state: dict):
        if stream == "image" and layer == 2:
            kv = self.image_prefix.expand(state["image"].shape[0], 1, 12)
            return kv, kv
        return None


@pytest.fixture
def model(monkeypatch) -> PromptedModel:
    monkeypatch.setitem(model_module.BACKBONES, "towers", TwoTowers)
    monkeypatch.setitem(PROMPT_METHODS, "towers", TowerPrompts)
    cfg = dataclasses.replace(Settings.from_config(small_config()).model, backbone="towers", prompt_method="towers")
    torch.manual_seed(0)
    return PromptedModel(cfg).double().eval()


def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    text, image = torch.randn(3, 5, 8, generator=g).double(), torch.randn(3, 4, 12, generator=g).double()
    return {"text": text, "text_masks": mask, "text_ids": mask, "image": image, "missing_type": torch.tensor([0, 1, 2])}


def _by_hand(model: PromptedModel, batch: dict) -> torch.Tensor:
    """Each tower as its blocks over [prompts | tokens], written out."""
    backbone, prompts, codes = model.backbone, model.prompts, batch["missing_type"]
    pooled = {}
    towers = (("text", backbone.text_blocks, batch["text"], prompts.text_prompt),
              ("image", backbone.image_blocks, batch["image"], prompts.image_prompt))  # fmt: skip
    for name, blocks, tokens, prompt in towers:
        p = prompt[codes]
        x = torch.cat([p, tokens], dim=1)
        mask = torch.cat(
            [torch.ones(3, 2).long(), batch["text_masks"] if name == "text" else torch.ones(3, 4).long()], 1
        )
        for layer, block in enumerate(blocks):
            if layer == 1:
                x = torch.cat([p[:, :1], x[:, 1:]], dim=1)
            kv = None
            if name == "image" and layer == 2:
                kv = (prompts.image_prefix.expand(3, 1, 12),) * 2
            x = block(x, mask, name == "text", kv)
        row = 2 + (batch["text_masks"].sum(1) - 1 if name == "text" else torch.zeros(3).long())
        pooled[name] = x[torch.arange(3), row]
    return model.food101_classifier(backbone.mix(torch.cat([pooled["image"], pooled["text"]], dim=1)))


def test_a_two_tower_backbone_runs_through_the_one_loop(model):
    batch = _batch()
    expected = _by_hand(model, batch)
    unpruned = model(batch, prune=False)
    torch.testing.assert_close(unpruned["food101_logits"], expected, rtol=0, atol=1e-12)
    assert unpruned["text_feats"].shape == (3, 5, 8) and unpruned["image_feats"].shape == (3, 4, 12)
    pruned = model(batch)  # the text after each sample's last real token is dropped; one row per tower at the end
    torch.testing.assert_close(pruned["food101_logits"], expected, rtol=0, atol=1e-12)


def test_the_method_and_the_backbone_tail_train(model):
    model.train()
    model(_batch())["food101_logits"].sum().backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == {"prompts.text_prompt", "prompts.image_prompt", "prompts.image_prefix", "backbone.mix.weight",
                       "backbone.mix.bias", "food101_classifier.weight", "food101_classifier.bias"}  # fmt: skip
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if not n.startswith("mix."))


# ---- the README's example of a new prompt method


class FrontPrompts(PromptMethod):
    def __init__(self, cfg, layout):  # layout: stream -> {side: width}, from the backbone
        super().__init__(cfg, layout)
        widths = {side: w for sides in layout.values() for side, w in sides.items()}
        self.front = nn.ParameterDict({side: nn.Parameter(torch.randn(4, w) * 0.02) for side, w in widths.items()})

    def edit_layers(self, stream):
        return (0,)  # before block 0 of every stream

    def edit(self, stream, layer, state):
        for side in stream.sides:  # prompts in front of the side's tokens, always visible
            side.region = [self.front[side.name].expand(side.tokens.shape[0], -1, -1), *side.region]


@pytest.mark.parametrize("backbone", ["vilt", "clip"])
def test_the_readmes_new_method_plugs_into_both_backbones(monkeypatch, backbone):
    monkeypatch.setitem(PROMPT_METHODS, "front", FrontPrompts)
    c = small_config(backbone=backbone, prompt_method="front")
    model = PromptedModel(Settings.from_config(c).model).double().eval()
    batch = make_batch(c)
    out = model(batch)
    torch.testing.assert_close(out["food101_logits"], model(batch, prune=False)["food101_logits"], rtol=0, atol=1e-12)
    task_losses(model.cfg.tasks, out, batch["label"])["food101_loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prompts.front.values())
