"""Factories: build a PromptedModel and load the weights a run names. Constructors never read files; these do.

- `create_model`: for training, the pre-trained backbone (`load_path`: any layout of the backbone, see
  mdpl.model.weights; else, for ViLT, `vit_weights`: a timm ViT; else random) or, with `fine_tuned`
  (finetune_first), a whole fine-tuned checkpoint.
- `model_from_state_dict`: for evaluation, the model of a checkpoint already read, with all its weights.
"""

from __future__ import annotations

import logging

import torch

from mdpl.model import weights
from mdpl.model.config import ModelConfig
from mdpl.model.model import PromptedModel

log = logging.getLogger(__name__)


def create_model(
    cfg: ModelConfig, load_path: str = "", vit_weights: str = "", fine_tuned: bool = False, trust: bool = False
) -> PromptedModel:
    model = PromptedModel(cfg)
    if load_path:
        sd, _ = weights.read_checkpoint(load_path, "load_path", trust)
        load = weights.load_finetuned if fine_tuned else weights.load_pretrained
        load(model, sd, f"load_path={load_path!r}")
    elif vit_weights and cfg.backbone == "vilt":
        sd, _ = weights.read_checkpoint(vit_weights, "vit_weights", trust)
        weights.load_pretrained(model, sd, f"vit_weights={vit_weights!r}")
    else:
        log.warning("load_path and vit_weights are empty: the backbone is randomly initialised")
    return model


def model_from_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor], source: str, seed: int) -> PromptedModel:
    """The model of `cfg` with every weight of `sd`. Built after seeding torch's global RNG with `seed`, as the
    official test-only run builds its model after seed_everything: weights a checkpoint does not hold (DCP's
    dynamic prompts, officially never saved) are then drawn as that run draws them."""
    torch.manual_seed(seed)
    model = PromptedModel(cfg)
    weights.load_finetuned(model, sd, source)
    return model
