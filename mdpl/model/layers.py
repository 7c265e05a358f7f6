"""The transformer block both backbones share, with the exact pruning it supports, and the row compaction.

Names follow timm's ViT (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2), which are also ViLT's official
names; CLIP's OpenAI names are mapped to them when its weights are read (mdpl.model.weights). Attention runs
through `F.scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class QuickGELU(nn.Module):
    """CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(nn.Sequential):
    """Linear(D_in, hidden) -> GELU -> Linear(hidden, D_out), no residual (MDPL, DCP: hidden D_in/16). Names 0 and 2
    as official."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))


def attention_mask(
    key_mask: Tensor | None, causal: bool, key_pos: Tensor | None, query_pos: Tensor | None, prefix: int
) -> Tensor | None:
    """The boolean mask (True = attend) of B x 1 x Q x K scores, or None when every key is visible.

    key_mask: B x K' (1 = a real key) over the projected keys; causal: a query sees the keys at its position and
    before, positions taken from key_pos (B x K') and query_pos (B x Q); `prefix` unprojected keys in front are
    always visible."""
    if key_mask is None and not causal:
        return None
    mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
    if causal:
        order = key_pos[:, None, None, :] <= query_pos[:, None, :, None]
        mask = order if mask is None else mask & order
    if prefix:
        mask = torch.cat([mask.new_ones(*mask.shape[:3], prefix), mask], dim=3)
    return mask


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        prefix_kv: tuple[Tensor, Tensor] | None = None,
        keys: tuple[Tensor, Tensor] | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        """x: B x N x D; mask: B x N (1 = attend, 0 = a padding key); causal: each position sees itself and
        those before it; prefix_kv: unprojected B x P x D keys and values in front, always visible (MAP).

        Pruning (exact: the rows that are computed equal those of the full computation):
        - keys=(index B x K, key_mask B x K): only the rows `index` of x are projected to keys and values, with
          key_mask instead of mask; keys masked out contribute nothing, so leaving them out changes only rounding.
        - rows (B,): only that row of each sample is a query; the output is B x 1 x D.
        """
        B, N, D = x.shape
        H = self.num_heads
        positions = torch.arange(N, device=x.device).expand(B, N) if causal else None
        key_pos = query_pos = positions
        if keys is None and rows is None:
            q, k, v = self.qkv(x).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        else:  # the query and key/value projections on different rows: split the fused qkv weight
            w, b = self.qkv.weight, self.qkv.bias
            xq = x if rows is None else x.gather(1, rows[:, None, None].expand(B, 1, D))
            if rows is not None:
                query_pos = rows[:, None]
            if keys is not None:
                key_pos, mask = keys
                x = x.gather(1, key_pos[..., None].expand(-1, -1, D))
            q = F.linear(xq, w[:D], b[:D]).view(B, -1, H, D // H).transpose(1, 2)
            k, v = F.linear(x, w[D:], b[D:]).view(B, -1, 2, H, D // H).permute(2, 0, 3, 1, 4)
        prefix = 0
        if prefix_kv is not None:
            pk, pv = (t.to(k.dtype).view(B, -1, H, D // H).transpose(1, 2) for t in prefix_kv)
            k, v, prefix = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), pk.shape[2]
        attn_mask = attention_mask(mask, causal, key_pos, query_pos, prefix)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, q.shape[2], D)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)); no DropPath.
    ViLT: LayerNorm eps 1e-6, GELU; CLIP: eps 1e-5, QuickGELU."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        eps: float = 1e-6,
        act: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, act=act)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        prefix_kv: tuple[Tensor, Tensor] | None = None,
        keys: tuple[Tensor, Tensor] | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        """See Attention.forward. With rows only those rows' outputs are computed (B x 1 x D): every row still
        gives keys and values, but the query, projection and MLP run on the given row alone."""
        h = self.attn(self.norm1(x), mask, causal, prefix_kv, keys, rows)
        x = (x if rows is None else x.gather(1, rows[:, None, None].expand(-1, 1, x.shape[2]))) + h
        return x + self.mlp(self.norm2(x))


def kept_rows(keep: Tensor) -> tuple[Tensor, Tensor]:
    """keep: B x N (True = a row to keep) -> (index B x M, valid B x M): each sample's kept positions in their
    order, moved to the front and filled up to M = the batch's largest kept count; valid is False on the fill
    entries (they index some dropped position and must stay masked). One device sync (M)."""
    counts = keep.sum(1)
    M = int(counts.max())
    index = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :M]
    valid = torch.arange(M, device=keep.device)[None] < counts[:, None]
    return index, valid


def compact(tokens: Tensor, mask: Tensor, rows: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Gather the rows `rows` = kept_rows(...) of tokens (B x N x D) -> (B x M x D, mask B x M): the original
    mask at the kept rows, 0 on the fill rows."""
    index, valid = rows
    tokens = tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
    return tokens, mask.gather(1, index) * valid.to(mask.dtype)
