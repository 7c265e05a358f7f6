"""The CLIP backbone (OpenAI CLIP ViT-B/16 by default): a vision tower and a text tower, two streams.

Both towers use the shared Block (LayerNorm eps 1e-5, QuickGELU; OpenAI's weight names are mapped to these when
weights are read, see mdpl.model.weights). Heads are width // 64, as OpenAI builds them.
- Vision ("image" stream): conv patches (no bias), class token, positions, ln_pre, blocks; its feature is
  ln_post of the class token times `proj`.
- Text ("text" stream, causal attention): token and position embeddings, blocks; its feature is ln_final of the
  end-of-text token (argmax of the ids) times `text_projection`.
The classifier reads the concatenation (image feature, text feature) with the missing modality's half set to
zero, as DCP does; every prompt method on CLIP shares this head, so their numbers compare.

Under fp16 autocast the vision tower's embeddings, and therefore its residual stream, are in the conv's output
dtype (ln_pre and ln_post cast back to it, as OpenAI's LayerNorm does); the text tower's stay in fp32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from mdpl.data.transforms import CLIP_MEAN_STD, normalize_images
from mdpl.model.config import ModelConfig
from mdpl.model.heads import init_weights
from mdpl.model.layers import Block, QuickGELU
from mdpl.model.stream import Side, Stream


def _blocks(width: int, layers: int) -> nn.ModuleList:
    blocks = nn.ModuleList([Block(width, width // 64, 4.0, 0.0, eps=1e-5, act=QuickGELU) for _ in range(layers)])
    # OpenAI's initialisation (only random-weight runs see it)
    for block in blocks:
        nn.init.normal_(block.attn.qkv.weight, std=width**-0.5)
        nn.init.zeros_(block.attn.qkv.bias)
        nn.init.normal_(block.attn.proj.weight, std=width**-0.5 * (2 * layers) ** -0.5)
        nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(block.mlp.fc2.weight, std=width**-0.5 * (2 * layers) ** -0.5)
    return blocks


class VisionTower(nn.Module):
    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, embed_dim: int) -> None:
        super().__init__()
        scale = width**-0.5
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_size // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = _blocks(width, layers)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def embed(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # B x grid^2 x D
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x).to(x.dtype)


class TextTower(nn.Module):
    def __init__(self, context: int, vocab_size: int, width: int, layers: int, embed_dim: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context, width))
        self.blocks = _blocks(width, layers)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def embed(self, ids: Tensor) -> Tensor:
        return self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]


class CLIP(nn.Module):
    mean_std = CLIP_MEAN_STD
    trainable = ("visual.ln_post.", "visual.proj", "text.ln_final.")  # parameters trained too (DCP's set)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTower(cfg.clip_image_size, cfg.clip_patch_size, cfg.clip_width, cfg.clip_layers,
                                  cfg.clip_embed_dim)  # fmt: skip
        self.text = TextTower(cfg.clip_context_length, cfg.clip_vocab_size, cfg.clip_text_width,
                              cfg.clip_text_layers, cfg.clip_embed_dim)  # fmt: skip

    layout = property(
        lambda self: {"text": {"text": self.cfg.clip_text_width}, "image": {"image": self.cfg.clip_width}}
    )

    def blocks(self, stream: str) -> nn.ModuleList:
        return (self.text if stream == "text" else self.visual).blocks

    def streams(self, batch: dict, generator: torch.Generator | None = None) -> list[Stream]:
        """Text first, then image, as DCP runs them."""
        ids, masks = batch["text_ids"], batch["text_masks"]
        text = Side("text", self.text.embed(ids), masks, pooled=ids.argmax(dim=1))
        images = batch["image"][0] if isinstance(batch["image"], (list, tuple)) else batch["image"]
        dtype = self.visual.proj.dtype
        images = normalize_images(images, batch["image_hw"], self.mean_std, batch["missing_type"] == 2, dtype)
        image = self.visual.embed(images)
        ones = torch.ones(image.shape[:2], dtype=masks.dtype, device=image.device)
        cls = torch.zeros_like(ids[:, 0])
        return [Stream("text", [text], causal=True), Stream("image", [Side("image", image, ones, pooled=cls)])]

    def norm(self, stream: str, x: Tensor) -> Tensor:
        return self.text.ln_final(x) if stream == "text" else self.visual.ln_post(x).to(x.dtype)

    def features(self, pooled: dict[str, Tensor], missing_type: Tensor) -> Tensor:
        """(image feature, text feature), the half of a missing modality zero (no gradient reaches it)."""
        image, text = pooled["image"] @ self.visual.proj, pooled["text"] @ self.text.text_projection
        image = torch.where((missing_type == 2)[:, None], 0.0, image)
        text = torch.where((missing_type == 1)[:, None], 0.0, text)
        return torch.cat([image, text], dim=1)

    def head(self, num_classes: int) -> nn.Module:
        """{task}_classifier: Linear(2 x embed_dim, C), weights N(0, 0.02), bias 0 (DCP)."""
        return nn.Linear(2 * self.cfg.clip_embed_dim, num_classes).apply(init_weights)
