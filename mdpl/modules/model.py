"""PromptedViLT: the frozen ViLT backbone, one prompt-method part, the pooler and the task heads.

A pure nn.Module: the constructor builds from a ModelConfig and reads no file (weights are loaded by
`mdpl.modules.factory`). Parameter names are the official flat ones: the prompt part's parameters appear
at the top level (`gen_t_prompt_memory.0.prompt_memory`, `complete_prompt`, ...), not under `prompts.`.

Pruning (`PromptedViLT.prune`, default True; `forward(batch, prune=...)` overrides it per call) computes only
what the logits depend on, exactly (same logits and trainable-parameter gradients up to float rounding):
padded tokens are dropped once no prompt-memory query reads them any more, padded keys are left out of the
attention before that, and the last block computes the pooled text [CLS] row only. A pruned forward
therefore returns cls_feats, the masks and the logits but no text_feats / image_feats / raw_cls_feats (the
last layer's other rows are not computed): call with prune=False for those (the unpruned official path).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from mdpl.modules.heads import Pooler, build_classifier, init_weights
from mdpl.modules.map_prompts import MAPPrompts
from mdpl.modules.prompts import MDPLPrompts, NoPrompts, PromptMemory
from mdpl.modules.vilt import Block, TextEmbeddings, VisionTransformer
from mdpl.settings import ModelConfig
from mdpl.tasks import TASKS
from mdpl.transforms import normalize_pixels

BACKBONE = ("text_embeddings", "token_type_embeddings", "transformer")  # always frozen (official)


def build_prompts(cfg: ModelConfig) -> nn.Module:
    D = cfg.hidden_size
    if cfg.prompt_method == "mdpl":
        return MDPLPrompts(
            D,
            cfg.gen_prompt_layers,
            cfg.shared_prompt_layers,
            cfg.gen_prompt_length,
            cfg.shared_prompt_length,
            cfg.mem_size,
            cfg.top_k,
            cfg.masked_query,
            cfg.fp32_similarity,
        )
    if cfg.prompt_method == "map":
        return MAPPrompts(
            D, cfg.prompt_layers, cfg.prompt_length, cfg.prompt_type, cfg.learnt_p, cfg.multi_layer_prompt
        )
    return NoPrompts()


def inline_module(parent: nn.Module, name: str, module: nn.Module) -> None:
    """Keep `module` callable as parent.<name>, but register its submodules, parameters and buffers directly
    on `parent`: parameter names and state-dict keys then carry no `<name>.` level (the official flat names)."""
    for child_name, child in module.named_children():
        parent.add_module(child_name, child)
    for param_name, param in module.named_parameters(recurse=False):
        parent.register_parameter(param_name, param)
    for buffer_name, buffer in module.named_buffers(recurse=False):
        parent.register_buffer(buffer_name, buffer)
    object.__setattr__(parent, name, module)  # not a registered child: nothing is listed twice


class PromptedViLT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        # init order as official: text, token types, ViT, pooler, heads, prompts (seeded runs match)
        self.text_embeddings = TextEmbeddings(cfg.vocab_size, D, cfg.max_text_len, dropout=cfg.drop_rate)
        self.text_embeddings.apply(init_weights)
        self.token_type_embeddings = nn.Embedding(2, D)
        self.token_type_embeddings.apply(init_weights)
        self.transformer = VisionTransformer(
            cfg.image_size, cfg.patch_size, D, cfg.num_layers, cfg.num_heads, cfg.mlp_ratio, cfg.drop_rate
        )
        self.pooler = Pooler(D)
        self.pooler.apply(init_weights)
        for task in cfg.tasks:
            head = build_classifier(D, cfg.num_classes(task))
            head.apply(init_weights)
            self.add_module(TASKS[task].head, head)
        inline_module(self, "prompts", build_prompts(cfg))
        for name in BACKBONE:
            getattr(self, name).requires_grad_(False)
        self.prune = True  # see the module docstring; not a parameter, not in the state dict

    def embed(self, batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(text_embeds B x T x D, text_masks B x T, image_embeds B x I x D, image_masks B x I)."""
        text_ids, text_masks = batch["text_ids"], batch["text_masks"]
        if self.cfg.trim_text:  # cut every batch to its longest real text (pads are invisible with masked_query)
            length = int((text_masks != 0).any(0).nonzero().max()) + 1
            text_ids, text_masks = text_ids[:, :length], text_masks[:, :length]
        text = self.text_embeddings(text_ids) + self.token_type_embeddings(torch.zeros_like(text_masks))
        images = batch["image"][0] if isinstance(batch["image"], (list, tuple)) else batch["image"]
        if images.dtype == torch.uint8:  # the loader's compact form: normalised here, on the model's device
            images = normalize_pixels(images, batch["image_hw"])
        image, image_masks = self.transformer.visual_embed(images, self.cfg.max_image_len, self.cfg.patch_order)
        image = image + self.token_type_embeddings(torch.ones_like(image_masks))
        return text, text_masks, image, image_masks

    def forward(self, batch: dict, prune: bool | None = None) -> dict[str, Tensor]:
        """cls_feats (pooled text [CLS]), text/image masks and {task}_logits per task; unpruned (prune=False, or
        self.prune False) also raw_cls_feats (the last layer's first row) and the text/image features.
        prune=None: self.prune."""
        prune = self.prune if prune is None else prune
        text, text_masks, image, image_masks = self.embed(batch)
        missing_type = torch.as_tensor(batch["missing_type"], device=text.device).long()
        x, text_start, image_start = self.prompts(
            self.transformer.blocks, text, text_masks, image, image_masks, missing_type, prune=prune
        )
        x = self.transformer.norm(x)  # pruned: x is the text [CLS] row alone (B x 1 x D, text_start 0)
        out = {"cls_feats": self.pooler(x[:, text_start]), "text_masks": text_masks, "image_masks": image_masks}
        if not prune:
            out.update(
                raw_cls_feats=x[:, 0],
                text_feats=x[:, text_start : text_start + text.shape[1]],
                image_feats=x[:, image_start:],
            )
        for task in self.cfg.tasks:
            out[f"{task}_logits"] = getattr(self, TASKS[task].head)(out["cls_feats"])
        return out


def compile_model(model: PromptedViLT) -> None:
    """torch.compile, in place, each transformer block and each MDPL prompt memory (config torch_compile). They
    hold nearly all of the computation and of its kernel launches; the prompt assembly between blocks stays
    eager (it reads data-dependent sizes: the kept-token counts). Same math up to float rounding; parameter
    names and state-dict keys are unchanged (Module.compile wraps the call, not the module).

    Shapes are dynamic from the first call (sequence lengths differ from batch to batch), so one graph serves
    all image sizes and text lengths. Separate graphs are made per variant: train / eval, with or without
    gradients, the pruned key and last-row forms (vilt.Block) and the autocast dtype; modules of one class
    share them."""
    # every variant is a recompile of the one forward; the default limit (8) would leave some to run eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for module in model.modules():
        if isinstance(module, (Block, PromptMemory)):
            module.compile(dynamic=True)
