"""Factories: build a PromptedViLT and load the weights a run asks for. Constructors never read files; these do.

- `create_model(settings)`: for training, the pre-trained backbone (`load_path`: official ViLT or Hugging
  Face ViLT; else `vit_weights`: a timm ViT; else random) or, with finetune_first, a fine-tuned checkpoint.
- `model_for_checkpoint(path, config, command_line)`: for evaluation (test_only and sweep), the model
  rebuilt from the checkpoint's own saved model config, with its weights (`model_from_checkpoint` when the
  file is read already).
"""

from __future__ import annotations

import logging

from mdpl.modules import weights
from mdpl.modules.model import PromptedViLT
from mdpl.settings import Settings, evaluation_config

log = logging.getLogger(__name__)


def create_model(settings: Settings) -> PromptedViLT:
    run = settings.run
    model = PromptedViLT(settings.model)
    if run.load_path and (run.test_only or run.finetune_first):
        sd = weights.read_state_dict(run.load_path, "load_path", run.trust_checkpoint)
        weights.load_finetuned(model, sd, f"load_path={run.load_path!r}")
    elif run.load_path:
        weights.load_pretrained(model, run.load_path, settings.model.max_text_len, trust=run.trust_checkpoint)
    elif run.vit_weights:
        weights.load_vit(model, run.vit_weights, trust=run.trust_checkpoint)
    else:
        log.warning("load_path and vit_weights are empty: the backbone is randomly initialised")
    return model


def model_for_checkpoint(
    path: str, config: dict, command_line: set[str] = frozenset(), what: str = "load_path", trust: bool = False
) -> tuple[Settings, PromptedViLT]:
    """(settings with the checkpoint's model config, the model with its weights) for evaluating `path`.

    Model keys come from the checkpoint (official checkpoints, which store none, from `config` with their
    prompt method told by their parameter names); a disagreeing model key on the command line is an error
    (see mdpl.settings.evaluation_config). Nothing but `path` is read."""
    sd, saved = weights.read_checkpoint(path, what, trust or bool(config.get("trust_checkpoint")))
    return model_from_checkpoint(sd, saved, path, config, command_line, what)


def model_from_checkpoint(
    sd: dict, saved: dict, path: str, config: dict, command_line: set[str] = frozenset(), what: str = "load_path"
) -> tuple[Settings, PromptedViLT]:
    """As model_for_checkpoint, from a checkpoint already read: its state dict and saved config
    (weights.read_checkpoint)."""
    source = f"{what}={path!r}"
    merged, notes = evaluation_config(saved, weights.prompt_method_of(sd), config, set(command_line), source)
    for note in notes:
        print(note, flush=True)
    settings = Settings.from_config({**merged, "load_path": path})
    model = PromptedViLT(settings.model)
    weights.load_finetuned(model, sd, source)
    return settings, model
