"""The ViLT backbone: BERT text embeddings and a timm-layout ViT-B/32 with ViLT's visual_embed, as one stream.

Parameter names are the official ones (Hugging Face BertEmbeddings names for the text embeddings, timm names
for the ViT), so official checkpoints load without renaming. The text [CLS] is the pooled token: the final
norm, then the pooler (Linear + tanh), give the classifier's input.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mdpl.data.transforms import PIXELBERT_MEAN_STD, normalize_images
from mdpl.model.config import ModelConfig
from mdpl.model.heads import Pooler, init_weights
from mdpl.model.layers import Block
from mdpl.model.stream import Side, Stream


class TextEmbeddings(nn.Module):
    """BERT embeddings: dropout(LayerNorm(word + token_type[0] + position))."""

    def __init__(
        self, vocab_size: int, hidden_size: int, max_position: int, eps: float = 1e-12, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_position, hidden_size)
        self.token_type_embeddings = nn.Embedding(2, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = self.position_embeddings.weight[: input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + positions + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class VisionTransformer(nn.Module):
    """timm-layout ViT (cls_token, pos_embed, patch_embed.proj, blocks.N, norm) with ViLT's visual_embed."""

    def __init__(
        self,
        image_size: int = 384,
        patch_size: int = 32,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop: float = 0.1,
    ) -> None:
        super().__init__()
        self.grid = image_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, drop) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_vit)

    def resized_pos_embed(self, hw: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """Per-sample grid position embeddings, B x D x grid_h x grid_w: the square table resized
        bilinearly (align_corners=True) to each sample's (h, w), zero-padded right/bottom. One interpolation
        per distinct (h, w) in the batch (there are few), not one per sample."""
        D = self.pos_embed.shape[-1]
        table = self.pos_embed[:, 1:].transpose(1, 2).reshape(1, D, self.grid, self.grid)
        out = table.new_zeros(hw.shape[0], D, grid_h, grid_w)
        shapes, inverse = torch.unique(hw, dim=0, return_inverse=True)
        for i, (h, w) in enumerate(shapes.tolist()):
            if h == 0 or w == 0:
                raise ValueError(f"an image has an empty patch grid ({h} x {w}); extreme aspect ratio?")
            resized = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=True)
            idx = (inverse == i).nonzero().squeeze(1)
            out[idx, :, :h, :w] = resized.expand(idx.numel(), -1, -1, -1)
        return out

    def visual_embed(
        self,
        images: Tensor,
        max_image_len: int = -1,
        patch_order: str = "random",
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """images: B x 3 x H x W with zero canvas padding -> (tokens B x (1+cap) x D, mask B x (1+cap)).

        patch_order "random" keeps the official distribution: a sample with cap valid patches gets them in
        a random order (a random subset when max_image_len cuts it), a sample with fewer gets its valid
        patches row-major plus pads drawn with replacement from its invalid cells. The draws are batched,
        so they are not the official per-sample draw sequence (results agree in exact math, not bitwise).
        "fixed": valid patches row-major, then the first invalid cells row-major as pads. Random draws come from
        `generator` (default: torch's global one).
        """
        x = self.patch_embed(images)  # B x D x gh x gw
        B, D, gh, gw = x.shape
        # a pixel is valid iff its channel sum is non-zero; each patch is judged by its top-left pixel
        valid = (images.sum(dim=1) != 0).float()[:, None]
        valid = F.interpolate(valid, size=(gh, gw), mode="nearest")[:, 0].bool()  # B x gh x gw
        hw = torch.stack([valid[:, :, 0].sum(1), valid[:, 0, :].sum(1)], dim=1)
        # no cast: under autocast the fp16 patches + fp32 positions promote to fp32, as official
        x = (x + self.resized_pos_embed(hw, gh, gw)).flatten(2).transpose(1, 2)
        valid = valid.flatten(1)  # B x n
        n = gh * gw

        counts = valid.sum(1)
        cap = int((hw[:, 0] * hw[:, 1]).max())
        if max_image_len >= 0:
            cap = min(cap, max_image_len)
        cells = torch.arange(n, device=x.device).expand(B, n)
        key = cells.float()
        if patch_order == "random":
            full = counts >= cap  # these samples get a random permutation / subset of valid patches
            key = torch.where(full[:, None], torch.rand(B, n, device=x.device, generator=generator), key)
        # valid cells first (in key order), invalid cells after them in row-major order
        key = torch.where(valid, key, key.new_full((), float(n)) + cells)
        order = key.argsort(dim=1)[:, :cap]
        if patch_order == "random":
            n_pads = (cap - counts).clamp(min=0)
            if int(n_pads.max()) > 0:
                weights = (~valid).float()
                weights[weights.sum(1) == 0] = 1.0  # rows without invalid cells draw nothing used
                pads = torch.multinomial(weights, int(n_pads.max()), replacement=True, generator=generator)
                slot = torch.arange(cap, device=x.device)[None] - counts[:, None]  # position among pads
                pad_cells = pads.gather(1, slot.clamp(0, pads.shape[1] - 1))
                order = torch.where(slot >= 0, pad_cells, order)
        x = x.gather(1, order[..., None].expand(-1, -1, D))
        mask = valid.gather(1, order)

        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1))
        mask = torch.cat([mask.new_ones(B, 1), mask], dim=1).long()
        return x, mask


class ViLT(nn.Module):
    """One stream [text-side prompts | text | image-side prompts | image]; the text [CLS] is pooled."""

    mean_std = PIXELBERT_MEAN_STD
    trainable = ("pooler.",)  # parameters trained with the prompts and heads (official)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        # init order as official: text, token types, ViT, pooler (seeded runs match)
        self.text_embeddings = TextEmbeddings(cfg.vocab_size, D, cfg.max_text_len, dropout=cfg.drop_rate)
        self.text_embeddings.apply(init_weights)
        self.token_type_embeddings = nn.Embedding(2, D)
        self.token_type_embeddings.apply(init_weights)
        self.transformer = VisionTransformer(
            cfg.image_size, cfg.patch_size, D, cfg.num_layers, cfg.num_heads, cfg.mlp_ratio, cfg.drop_rate
        )
        self.pooler = Pooler(D)
        self.pooler.apply(init_weights)

    @property
    def layout(self) -> dict[str, dict[str, int]]:
        """Stream -> {side: width}."""
        return {"joint": {"text": self.cfg.hidden_size, "image": self.cfg.hidden_size}}

    def blocks(self, stream: str) -> nn.ModuleList:
        return self.transformer.blocks

    def streams(self, batch: dict, generator: torch.Generator | None = None) -> list[Stream]:
        text_ids, text_masks = batch["text_ids"], batch["text_masks"]
        if self.cfg.trim_text:  # cut every batch to its longest real text (pads are invisible with masked_query)
            length = int((text_masks != 0).any(0).nonzero().max()) + 1
            text_ids, text_masks = text_ids[:, :length], text_masks[:, :length]
        text = self.text_embeddings(text_ids) + self.token_type_embeddings.weight[0]  # token type 0: text
        dtype = self.transformer.pos_embed.dtype
        images = batch["image"][0] if isinstance(batch["image"], (list, tuple)) else batch["image"]
        images = normalize_images(images, batch["image_hw"], self.mean_std, batch["missing_type"] == 2, dtype)
        cfg = self.cfg
        image, image_masks = self.transformer.visual_embed(images, cfg.max_image_len, cfg.patch_order, generator)
        image = image + self.token_type_embeddings.weight[1]  # token type 1: image
        cls = torch.zeros_like(text_masks[:, 0])
        return [Stream("joint", [Side("text", text, text_masks, pooled=cls), Side("image", image, image_masks)])]

    def norm(self, stream: str, x: Tensor) -> Tensor:
        return self.transformer.norm(x)

    def features(self, pooled: dict[str, Tensor], missing_type: Tensor) -> Tensor:
        """The classifier's input: the pooler on the normalised text [CLS]."""
        return self.pooler(pooled["joint"])

    def head(self, num_classes: int) -> nn.Module:
        """{task}_classifier: Linear(D, 2D) [0] -> LayerNorm [1] -> GELU [2] -> Linear(2D, C) [3] (official)."""
        D = self.cfg.hidden_size
        head = nn.Sequential(nn.Linear(D, D * 2), nn.LayerNorm(D * 2), nn.GELU(), nn.Linear(D * 2, num_classes))
        return head.apply(init_weights)


def _init_vit(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
