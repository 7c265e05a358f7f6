"""Helpers shared by the tests (imported as `helpers`; pytest puts tests/ on the path)."""

from __future__ import annotations

from mdpl.model.factory import create_model as _create_model
from mdpl.model.model import PromptedModel
from mdpl.train.settings import Settings


def create_model(settings: Settings | dict) -> PromptedModel:
    """The model the configuration names, with its weights: load_path as a fine-tuned checkpoint with test_only
    or finetune_first (strict, model keys from the configuration), else as pre-trained backbone weights."""
    if isinstance(settings, dict):
        settings = Settings.from_config(settings)
    r = settings.run
    fine_tuned = r.test_only or r.finetune_first
    return _create_model(settings.model, r.load_path, r.vit_weights, fine_tuned, r.trust_checkpoint)
