"""MDPL's prompt part: prompt memories (generative prompts), missing-type shared prompts and their insertion.

`MDPLPrompts` owns every MDPL parameter under the official flat names (gen_t_prompt_memory.N.prompt_memory,
shared_missing_t.N, bottleneck_texts.N.0.weight, ...; N is the position in the layer list) and runs the
transformer blocks, inserting prompts before each prompt layer.
See docs/official-behaviour.md#model-and-prompt-insertion.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mdpl.modules.heads import init_weights
from mdpl.modules.vilt import compact, kept_rows


class PromptMemory(nn.Module):
    """A memory of `size` prompts with one key each; a query reads a softmax mix of its top-k prompts.

    s = q̂ K̂ᵀ (cosine), idx = top-k(s), r = ⟨q̂, K̂[idx]⟩, output Σ softmax(r)_j M[idx_j]  (B x L x D).
    Under autocast the official similarity matmul runs in fp16, so top-k sees fp16 scores;
    fp32_similarity=True computes it in fp32 instead (near-ties then select as in exact math).
    """

    def __init__(self, size: int, length: int, dim: int, top_k: int, fp32_similarity: bool = False) -> None:
        super().__init__()
        self.top_k = min(top_k, size)
        self.fp32_similarity = fp32_similarity
        self.prompt_memory = nn.Parameter(torch.empty(size, length, dim))
        self.prompt_keys = nn.Parameter(torch.empty(size, dim))
        # official: kaiming_normal_(a=sqrt(5), fan_in) -> std 1/sqrt(3 fan_in)
        nn.init.kaiming_normal_(self.prompt_memory, a=math.sqrt(5))
        nn.init.kaiming_normal_(self.prompt_keys, a=math.sqrt(5))

    def forward(self, query: Tensor) -> Tensor:
        dtype = torch.promote_types(query.dtype, torch.float32)  # at least fp32 (fp64 stays fp64)
        q = F.normalize(query.to(dtype), dim=-1)
        k = F.normalize(self.prompt_keys.to(dtype), dim=-1)
        if self.fp32_similarity:
            with torch.autocast(q.device.type, enabled=False):
                scores = q @ k.t()
        else:
            scores = q @ k.t()  # fp16 under autocast, as official
        idx = scores.topk(self.top_k, dim=1, sorted=False).indices  # B x k
        r = (q[:, None, :] * k[idx]).sum(-1)  # recomputed in fp32 (elementwise ops are not autocast)
        w = r.softmax(dim=1)
        return (w[:, :, None, None] * self.prompt_memory[idx].to(dtype)).sum(1)


class Bottleneck(nn.Sequential):
    """Linear(D, D/16) -> GELU -> Linear(D/16, D), no residual. Names 0 and 2 as official."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def check_missing_type(missing_type: Tensor) -> None:
    """Codes are 0 complete, 1 text missing, 2 image missing (official: another code silently reuses the
    previous sample's prompt)."""
    bad = (missing_type < 0) | (missing_type > 2)
    if bool(bad.any()):
        raise ValueError(f"missing_type codes must be 0, 1 or 2, got {missing_type[bad].tolist()}")


def shared_prompts(
    a_t: Tensor, a_v: Tensor, f_text: nn.Module, f_image: nn.Module, missing_type: Tensor
) -> tuple[Tensor, Tensor]:
    """The shared prompts chosen by missing type, batched: base 0 -> A_t + A_v, 1 (text missing) -> A_t,
    2 (image missing) -> A_v; each of the three bases goes through the bottlenecks once, then samples
    gather theirs. Returns (S_t, S_v), each B x L x D. Codes must be valid (see check_missing_type)."""
    bases = torch.stack([a_t + a_v, a_t, a_v])  # 3 x L x D
    return f_text(bases)[missing_type], f_image(bases)[missing_type]


def max_query(tokens: Tensor, mask: Tensor, masked: bool) -> Tensor:
    """Memory query: elementwise max over tokens (official: pads included; masked_query: real tokens only)."""
    if masked:
        tokens = tokens.masked_fill(mask[..., None] == 0, float("-inf"))
    return tokens.amax(dim=1)


class Side:
    """One modality's slice of the sequence: its prompt region, then its tokens; counts shared prompts.

    The region is kept as a list of pieces and concatenated only once, with everything else, by `sequence`."""

    def __init__(self, tokens: Tensor, mask: Tensor) -> None:
        self.region: list[Tensor] = []
        self.tokens, self.mask = tokens, mask
        self.shared = 0  # shared-prompt tokens at the front of the region

    @property
    def width(self) -> int:
        return sum(p.shape[1] for p in self.region)

    def insert(self, shared: Tensor | None, generative: Tensor | None) -> None:
        """The official insertion rule, on either side:
        - both kinds at this layer: [new shared, new generative, previous region]
        - generative only: the new generative prompts after the region's first `shared` tokens
        - shared only: [new shared, previous region]"""
        (old,) = self.region  # as read back from the hidden states before this layer: one piece
        if shared is not None and generative is not None:
            self.region = [shared, generative, old]
        elif generative is not None:
            self.region = [old[:, : self.shared], generative, old[:, self.shared :]]
        else:
            self.region = [shared, old]
        self.shared += 0 if shared is None else shared.shape[1]

    def compact(self, rows: tuple[Tensor, Tensor]) -> None:
        """Drop the padded tokens: rows = kept_rows(mask) of the tokens as they are now (not yet compacted)."""
        self.tokens, self.mask = compact(self.tokens, self.mask, rows)

    def key_rows(self, rows: tuple[Tensor, Tensor], offset: int) -> tuple[Tensor, Tensor]:
        """(index, mask) of this side's key rows in the whole sequence, the side starting at `offset`:
        every prompt, then the real tokens (rows = kept_rows(mask) of the uncompacted tokens)."""
        index, valid = rows
        B, P = index.shape[0], self.width
        prompts = torch.arange(offset, offset + P, device=index.device).expand(B, P)
        mask = torch.cat([valid.new_ones(B, P), self.mask.gather(1, index).bool() & valid], dim=1)
        return torch.cat([prompts, index + offset + P], dim=1), mask


def sequence(t: Side, v: Side) -> tuple[Tensor, Tensor]:
    """The whole sequence [text region | text | image region | image] and its mask, in one concatenation each."""
    B = t.mask.shape[0]
    x = torch.cat([*t.region, t.tokens, *v.region, v.tokens], dim=1)
    ones_t, ones_v = t.mask.new_ones(B, t.width), t.mask.new_ones(B, v.width)
    return x, torch.cat([ones_t, t.mask, ones_v, v.mask], dim=1)


class MDPLPrompts(nn.Module):
    """Generative prompts from prompt memories queried by the hidden states, and shared prompts chosen by
    missing type through text/image bottlenecks, inserted on the text and the image side of the sequence."""

    def __init__(
        self,
        dim: int,
        gen_layers: tuple[int, ...],
        shared_layers: tuple[int, ...],
        gen_length: int,
        shared_length: int,
        mem_size: int,
        top_k: int,
        masked_query: bool = False,
        fp32_similarity: bool = False,
    ) -> None:
        super().__init__()
        self.gen_layers, self.shared_layers = tuple(gen_layers), tuple(shared_layers)
        self.masked_query = masked_query
        # init order of the official code: image memories, text memories, shared t, shared v, bottlenecks
        self.gen_v_prompt_memory = nn.ModuleList(
            [PromptMemory(mem_size, gen_length, dim, top_k, fp32_similarity) for _ in gen_layers]
        )
        self.gen_t_prompt_memory = nn.ModuleList(
            [PromptMemory(mem_size, gen_length, dim, top_k, fp32_similarity) for _ in gen_layers]
        )
        self.shared_missing_t = nn.ParameterList(
            [nn.Parameter(torch.randn(shared_length, dim) * 0.02) for _ in shared_layers]
        )
        self.shared_missing_v = nn.ParameterList(
            [nn.Parameter(torch.randn(shared_length, dim) * 0.02) for _ in shared_layers]
        )
        width = dim // 16  # official: hidden_size // 16 (the bottleneck_dim key is unused)
        self.bottleneck_texts = nn.ModuleList([Bottleneck(dim, width) for _ in shared_layers])
        self.bottleneck_images = nn.ModuleList([Bottleneck(dim, width) for _ in shared_layers])
        self.bottleneck_images.apply(init_weights)
        self.bottleneck_texts.apply(init_weights)

    def forward(
        self,
        blocks: nn.ModuleList,
        text: Tensor,
        text_masks: Tensor,
        image: Tensor,
        image_masks: Tensor,
        missing_type: Tensor,
        prune: bool = False,
    ) -> tuple[Tensor, int, int | None]:
        """Run `blocks` over [text-side prompts | text | image-side prompts | image]; returns (x, start of the
        text tokens = index of the text [CLS], start of the image tokens).

        prune=True computes only what the pooled text [CLS] depends on (exact up to float rounding) and
        returns (x B x 1 x D = the text [CLS] row, 0, None):
        (a) padded tokens ([PAD] text, padded image patches) are only ever read as memory queries: the
            official query max-pools over all tokens, pads included, before each generative layer. So the
            pads are dropped (each sample's real tokens compacted to the front) right after the last query,
            i.e. from block max(gen_layers) on; from block 0 with masked_query (queries read real tokens
            only) or without generative layers.
        (c) before that, pad rows are computed as queries, but as keys they are masked: the blocks attend
            over the real keys only (pads get no key/value projection).
        (b) the last block computes keys/values of all rows but the query, projection and MLP of the
            text [CLS] row only (the only row the pooler reads)."""
        check_missing_type(missing_type)  # once here, not per layer (a device sync)
        t, v = Side(text, text_masks), Side(image, image_masks)
        x, mask = torch.cat([text, image], dim=1), torch.cat([text_masks, image_masks], dim=1)
        drop_at, keys, last = -1, None, len(blocks) - 1
        if prune:
            drop_at = max(self.gen_layers) if self.gen_layers and not self.masked_query else 0
            t_rows, v_rows = kept_rows(text_masks, keep_first=True), kept_rows(image_masks)
        for layer, block in enumerate(blocks):
            g = self.gen_layers.index(layer) if layer in self.gen_layers else None
            s = self.shared_layers.index(layer) if layer in self.shared_layers else None
            if g is not None or s is not None or layer == drop_at:
                # the hidden states before this layer's insertion (the embeddings at layer 0)
                pt, t.tokens, pv, v.tokens = x.split([t.width, t.tokens.shape[1], v.width, v.tokens.shape[1]], dim=1)
                t.region, v.region = [pt], [pv]
                if g is not None or s is not None:
                    p_t = p_v = s_t = s_v = None
                    if g is not None:
                        p_t = self.gen_t_prompt_memory[g](max_query(t.tokens, t.mask, self.masked_query)).to(x.dtype)
                        p_v = self.gen_v_prompt_memory[g](max_query(v.tokens, v.mask, self.masked_query)).to(x.dtype)
                    if s is not None:
                        s_t, s_v = shared_prompts(
                            self.shared_missing_t[s],
                            self.shared_missing_v[s],
                            self.bottleneck_texts[s],
                            self.bottleneck_images[s],
                            missing_type,
                        )
                        s_t, s_v = s_t.to(x.dtype), s_v.to(x.dtype)
                    t.insert(s_t, p_t)
                    v.insert(s_v, p_v)
                if layer == drop_at:  # (a): the last query has read the pad rows; nothing reads them any more
                    t.compact(t_rows)
                    v.compact(v_rows)
                x, mask = sequence(t, v)
                keys = None
            if layer < drop_at and keys is None:  # (c): pads are still queries, never keys
                (it, kt) = t.key_rows(t_rows, 0)
                (iv, kv) = v.key_rows(v_rows, t.width + t.tokens.shape[1])
                keys = torch.cat([it, iv], dim=1), torch.cat([kt, kv], dim=1)
            x = block(x, mask, keys=keys, row=t.width if prune and layer == last else None)  # (b)
        if prune:
            return x, 0, None
        return x, t.width, t.width + t.tokens.shape[1] + v.width


class NoPrompts(nn.Module):
    """Plain frozen ViLT: the blocks over [text | image], no prompts."""

    def forward(
        self,
        blocks: nn.ModuleList,
        text: Tensor,
        text_masks: Tensor,
        image: Tensor,
        image_masks: Tensor,
        missing_type: Tensor,
        prune: bool = False,
    ) -> tuple[Tensor, int, int | None]:
        """prune=True: nothing reads pad rows, so they are dropped before block 0, and the last block computes
        the text [CLS] row only; returns (x B x 1 x D, 0, None). See MDPLPrompts.forward."""
        if prune:
            text, text_masks = compact(text, text_masks, kept_rows(text_masks, keep_first=True))
            image, image_masks = compact(image, image_masks, kept_rows(image_masks))
        x, mask = torch.cat([text, image], dim=1), torch.cat([text_masks, image_masks], dim=1)
        for i, block in enumerate(blocks):
            x = block(x, mask, row=0 if prune and i == len(blocks) - 1 else None)
        return (x, 0, None) if prune else (x, 0, text.shape[1])
