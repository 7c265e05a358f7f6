"""PromptedModel: a frozen backbone, one prompt method, the task heads, and the one loop over the blocks.

A plain nn.Module built from a ModelConfig; the constructor reads no file (mdpl.model.factory loads weights).
Its children are `backbone` (ViLT or CLIP), `prompts` (a PromptMethod) and `{task}_classifier`; files on disk use
the official flat names, produced and consumed by `official_state_dict` / `from_official` at the checkpoint
boundary.

Pruning (default on; `forward(batch, prune=False)` turns it off per call) computes only what the logits depend
on, exactly (same logits and trainable-parameter gradients up to float rounding):
(a) padded tokens (ViLT [PAD] text and padded patches, CLIP text after end-of-text) are dropped from the
    sequence once no prompt edit reads them any more (`PromptMethod.pad_reads`);
(b) before that they stay as queries but are left out as keys: they are masked keys, so nothing changes;
(c) the last block computes the pooled row only (every row still gives keys and values).
A pruned forward returns the features, masks and logits; unpruned, also each side's last hidden states
(`text_feats`, `image_feats`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from mdpl.model.clip import CLIP
from mdpl.model.config import ModelConfig
from mdpl.model.layers import Block, kept_rows
from mdpl.model.prompts import PROMPT_METHODS, PromptMethod
from mdpl.model.prompts.mdpl import PromptMemory
from mdpl.model.stream import Stream
from mdpl.model.vilt import ViLT

BACKBONES = {"vilt": ViLT, "clip": CLIP}


def run_blocks(stream: Stream, blocks: nn.ModuleList, method: PromptMethod, state: dict, prune: bool) -> Tensor:
    """Run `blocks` over `stream`, letting `method` edit the sequence before its layers; returns the last hidden
    states (B x N x D, the sides read back into `stream`), or pruned the pooled row alone (B x 1 x D)."""
    edits, last = set(method.edit_layers(stream.name)), len(blocks) - 1
    drop_at, keys, x, mask = -1, None, None, None
    if prune:  # (a) and (b): the rows to keep, from the masks as they come in
        drop_at = method.pad_reads(stream.name)
        rows = [kept_rows(side.keep()) for side in stream.sides]
    for layer, block in enumerate(blocks):
        if x is None or layer in edits or layer == drop_at:
            if x is not None:
                stream.read_back(x)
            if layer in edits:
                method.edit(stream, layer, state)
            if layer == drop_at:
                for side, kept in zip(stream.sides, rows):
                    side.compact(kept)
            x, mask = stream.sequence()
            keys = None
        if layer < drop_at and keys is None:  # (b)
            parts = [side.key_rows(kept, stream.offset(side)) for side, kept in zip(stream.sides, rows)]
            keys = torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)
        query_rows = stream.pooled_rows() if prune and layer == last else None  # (c)
        kv = method.prefix_kv(stream.name, layer, state)
        x = block(x, mask, stream.causal, kv, keys, query_rows)
    if not prune:
        stream.read_back(x)
    return x


class PromptedModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # init order as official: backbone, heads, prompts (seeded runs draw the official initial values)
        self.backbone = BACKBONES[cfg.backbone](cfg)
        for task in cfg.tasks:
            self.add_module(f"{task}_classifier", self.backbone.head(cfg.num_classes(task)))
        self.prompts = PROMPT_METHODS[cfg.prompt_method](cfg, self.backbone.layout)
        for name, param in self.backbone.named_parameters():  # frozen, but for its trainable tail
            param.requires_grad_(name.startswith(self.backbone.trainable))
        self.prune = True  # see the module docstring; not a parameter, not in the state dict

    def forward(self, batch: dict, prune: bool | None = None, generator: torch.Generator | None = None) -> dict:
        """{task}_logits per task, the features the heads read (cls_feats), each side's mask, and unpruned
        (prune=False, or self.prune False) each side's last hidden states. `generator` draws the random numbers
        of a forward that has any (ViLT's patch_order="random"); default: torch's global generator."""
        prune = self.prune if prune is None else prune
        missing_type = torch.as_tensor(batch["missing_type"], device=batch["text_ids"].device).long()
        bad = (missing_type < 0) | (missing_type > 2)  # official: another code reuses the previous prompt
        if bool(bad.any()):
            raise ValueError(f"missing_type codes must be 0, 1 or 2, got {missing_type[bad].tolist()}")
        streams = self.backbone.streams({**batch, "missing_type": missing_type}, generator)
        masks = {side.name: side.mask for stream in streams for side in stream.sides}  # as embedded, not pruned
        state = self.prompts.prepare(missing_type, streams)
        out, pooled = {}, {}
        for stream in streams:
            x = run_blocks(stream, self.backbone.blocks(stream.name), self.prompts, state, prune)
            x = self.backbone.norm(stream.name, x)
            if prune:
                pooled[stream.name] = x[:, 0]
            else:
                pooled[stream.name] = x.gather(1, stream.pooled_rows()[:, None, None].expand(-1, 1, x.shape[2]))[:, 0]
            for side in stream.sides:
                out[f"{side.name}_masks"] = masks[side.name]
                if not prune:
                    start = stream.offset(side) + side.width
                    out[f"{side.name}_feats"] = x[:, start : start + side.tokens.shape[1]]
        out["cls_feats"] = self.backbone.features(pooled, missing_type)
        for task in self.cfg.tasks:
            out[f"{task}_logits"] = getattr(self, f"{task}_classifier")(out["cls_feats"])
        return out

    def official_state_dict(self) -> dict[str, Tensor]:
        """The state dict under the names files use: the backbone's and the prompt method's parameters at the
        top level (the official flat names), the heads as `{task}_classifier.*`."""
        return {official_name(k): v for k, v in self.state_dict().items()}

    def from_official(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict in file names -> this model's names; keys it does not know pass unchanged."""
        names = {official_name(k): k for k in self.state_dict()}
        return {names.get(k, k): v for k, v in sd.items()}


def official_name(key: str) -> str:
    """Our parameter name -> its name in files ("backbone." and "prompts." dropped)."""
    for prefix in ("backbone.", "prompts."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def compile_model(model: PromptedModel) -> None:
    """torch.compile, in place, each transformer block and each MDPL prompt memory (config torch_compile). They
    hold nearly all of the computation and of its kernel launches; the prompt edits between blocks stay eager
    (they read data-dependent sizes). Same math up to float rounding; parameter names and state-dict keys are
    unchanged (Module.compile wraps the call, not the module).

    Shapes are dynamic from the first call (sequence lengths differ from batch to batch), so one graph serves
    all image sizes and text lengths. Separate graphs are made per variant: train / eval, with or without
    gradients, the pruned forms and the autocast dtype; modules of one class share them."""
    # every variant is a recompile of the one forward; the default limit (8) would leave some to run eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for module in model.modules():
        if isinstance(module, (Block, PromptMemory)):
            module.compile(dynamic=True)
