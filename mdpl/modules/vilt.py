"""The frozen ViLT backbone: BERT text embeddings and a timm-style ViT-B/32 with ViLT's visual_embed.

Parameter names follow the official layout (HF BertEmbeddings names for the text side, timm names for the
ViT) so official checkpoints load without renaming. Attention runs through
`F.scaled_dot_product_attention` with a key-padding mask.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class TextEmbeddings(nn.Module):
    """BERT embeddings: dropout(LayerNorm(word + token_type[0] + position))."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position: int,
        type_vocab: int = 2,
        eps: float = 1e-12,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_position, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)
        # persistent, as in transformers 4.21: official checkpoints carry it
        self.register_buffer("position_ids", torch.arange(max_position)[None], persistent=True)

    def forward(self, input_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :T])
        x = x + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        prefix_kv: tuple[Tensor, Tensor] | None = None,
        keys: tuple[Tensor, Tensor] | None = None,
        row: int | None = None,
    ) -> Tensor:
        """x: B x N x D; mask: B x N (1 = attend, 0 = padding key); prefix_kv: unprojected B x P x D
        keys and values put in front of the projected ones, always visible (MAP's attention prompts).

        Pruning (exact: the result rows that are computed are those of the full computation):
        - keys=(index B x K, key_mask B x K): only the rows `index` of x are projected to keys/values, with
          key_mask (instead of mask) as their padding mask. Rows masked as keys contribute exactly nothing,
          so leaving them out changes only float rounding.
        - row=r: only row r of each sample is a query; the output is B x 1 x D.
        """
        B, N, D = x.shape
        H = self.num_heads
        if keys is None and row is None:
            q, k, v = self.qkv(x).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        else:  # the query and key/value projections on different rows: split the fused qkv weight
            w, b = self.qkv.weight, self.qkv.bias
            xq = x if row is None else x[:, row : row + 1]
            if keys is not None:
                index, mask = keys
                x = x.gather(1, index[..., None].expand(-1, -1, D))
            q = F.linear(xq, w[:D], b[:D]).view(B, -1, H, D // H).transpose(1, 2)
            k, v = F.linear(x, w[D:], b[D:]).view(B, -1, 2, H, D // H).permute(2, 0, 3, 1, 4)
        if prefix_kv is not None:
            pk, pv = (t.to(k.dtype).view(B, -1, H, D // H).transpose(1, 2) for t in prefix_kv)
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            if mask is not None:
                mask = torch.cat([mask.new_ones(B, pk.shape[2]), mask], dim=1)
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, q.shape[2], D)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block (timm ViT, LayerNorm eps 1e-6, no DropPath)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        prefix_kv: tuple[Tensor, Tensor] | None = None,
        keys: tuple[Tensor, Tensor] | None = None,
        row: int | None = None,
    ) -> Tensor:
        """keys / row: see Attention.forward. With row=r only that row's output is computed (B x 1 x D):
        every row still gives keys and values, but the query, projection and MLP run on row r alone."""
        h = self.attn(self.norm1(x), mask, prefix_kv, keys, row)
        x = (x if row is None else x[:, row : row + 1]) + h
        return x + self.mlp(self.norm2(x))


def kept_rows(mask: Tensor, keep_first: bool = False) -> tuple[Tensor, Tensor]:
    """mask: B x N (1 = real token) -> (index B x M, valid B x M): each sample's real positions in their
    order, moved to the front and filled up to M = the batch's largest real count; valid is False on the
    fill entries (they index some dropped position and must stay masked). keep_first also keeps position 0
    whatever its mask (the text [CLS] row the pooler reads). One device sync (M)."""
    keep = mask != 0
    if keep_first:
        keep = keep.clone()
        keep[:, 0] = True
    counts = keep.sum(1)
    M = int(counts.max())
    index = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :M]
    valid = torch.arange(M, device=mask.device)[None] < counts[:, None]
    return index, valid


def compact(tokens: Tensor, mask: Tensor, rows: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Gather the rows `rows` = kept_rows(mask) of tokens (B x N x D) -> (B x M x D, mask B x M): the
    original mask at the kept rows, 0 on the fill rows."""
    index, valid = rows
    tokens = tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
    return tokens, mask.gather(1, index) * valid.to(mask.dtype)


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
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} must be divisible by num_heads {num_heads}")
        self.patch_size = patch_size
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
        self, images: Tensor, max_image_len: int = -1, patch_order: str = "random"
    ) -> tuple[Tensor, Tensor]:
        """images: B x 3 x H x W with zero canvas padding -> (tokens B x (1+cap) x D, mask B x (1+cap)).

        patch_order "random" keeps the official distribution: a sample with cap valid patches gets them in
        a random order (a random subset when max_image_len cuts it), a sample with fewer gets its valid
        patches row-major plus pads drawn with replacement from its invalid cells. The draws are batched,
        so they are not the official per-sample draw sequence (results agree in exact math, not bitwise).
        "fixed": valid patches row-major, then the first invalid cells row-major as pads.
        """
        if patch_order not in ("random", "fixed"):
            raise ValueError(f"patch_order must be 'random' or 'fixed', got {patch_order!r}")
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
            key = torch.where(full[:, None], torch.rand(B, n, device=x.device), key)
        # valid cells first (in key order), invalid cells after them in row-major order
        key = torch.where(valid, key, key.new_full((), float(n)) + cells)
        order = key.argsort(dim=1)[:, :cap]
        if patch_order == "random":
            n_pads = (cap - counts).clamp(min=0)
            if int(n_pads.max()) > 0:
                weights = (~valid).float()
                weights[weights.sum(1) == 0] = 1.0  # rows without invalid cells draw nothing used
                pads = torch.multinomial(weights, int(n_pads.max()), replacement=True)
                slot = torch.arange(cap, device=x.device)[None] - counts[:, None]  # position among pads
                pad_cells = pads.gather(1, slot.clamp(0, pads.shape[1] - 1))
                order = torch.where(slot >= 0, pad_cells, order)
        x = x.gather(1, order[..., None].expand(-1, -1, D))
        mask = valid.gather(1, order)

        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1))
        mask = torch.cat([mask.new_ones(B, 1), mask], dim=1).long()
        return x, mask


def _init_vit(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
