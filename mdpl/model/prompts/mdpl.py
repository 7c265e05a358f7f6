"""MDPL's prompt method: prompt memories (generative prompts) and missing-type shared prompts, inserted on each
side in front of its tokens (docs/official-behaviour.md#model-and-prompt-insertion).

Parameters keep the official flat names (gen_t_prompt_memory.N.prompt_memory, shared_missing_t.N,
bottleneck_texts.N.0.weight, ...; N is the position in the layer list). On ViLT both sides live in one stream;
on CLIP the text side is the text tower and the image side the vision tower: the memories have each tower's
width, and the shared prompts (text-tower width) pass through bottlenecks to each tower's width.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mdpl.model.config import ModelConfig
from mdpl.model.heads import init_weights
from mdpl.model.layers import Bottleneck
from mdpl.model.prompts.base import PromptMethod
from mdpl.model.stream import Side, Stream


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


def shared_prompts(
    a_t: Tensor, a_v: Tensor, f_text: nn.Module, f_image: nn.Module, missing_type: Tensor
) -> tuple[Tensor, Tensor]:
    """The shared prompts chosen by missing type, batched: base 0 -> A_t + A_v, 1 (text missing) -> A_t,
    2 (image missing) -> A_v; each of the three bases goes through the bottlenecks once, then samples
    gather theirs. Returns (S_t, S_v), each B x L x D."""
    bases = torch.stack([a_t + a_v, a_t, a_v])  # 3 x L x D
    return f_text(bases)[missing_type], f_image(bases)[missing_type]


def max_query(tokens: Tensor, mask: Tensor, masked: bool) -> Tensor:
    """Memory query: elementwise max over tokens (official: pads included; masked: real tokens only)."""
    if masked:
        tokens = tokens.masked_fill(mask[..., None] == 0, float("-inf"))
    return tokens.amax(dim=1)


def insert(side: Side, shared: Tensor | None, generative: Tensor | None, shared_before: int) -> None:
    """The official insertion rule, on either side, given the `shared_before` shared-prompt tokens inserted by
    earlier layers:
    - both kinds at this layer: [new shared, new generative, previous region]
    - generative only: the new generative prompts after the region's first `shared_before` tokens
    - shared only: [new shared, previous region]"""
    old = side.region[0] if side.region else side.tokens[:, :0]  # read back before this layer: one piece
    if shared is not None and generative is not None:
        side.region = [shared, generative, old]
    elif generative is not None:
        side.region = [old[:, :shared_before], generative, old[:, shared_before:]]
    else:
        side.region = [shared, old]


class MDPLPrompts(PromptMethod):
    """Generative prompts from prompt memories queried by the hidden states, and shared prompts chosen by
    missing type through text / image bottlenecks, inserted on the text and the image side."""

    def __init__(self, cfg: ModelConfig, layout: dict[str, dict[str, int]]) -> None:
        super().__init__(cfg, layout)
        widths = {side: w for sides in layout.values() for side, w in sides.items()}
        text, image = widths["text"], widths["image"]
        gen_layers, shared_layers = cfg.gen_prompt_layers, cfg.shared_prompt_layers
        self.gen_layers, self.shared_layers = tuple(gen_layers), tuple(shared_layers)
        self.shared_length = cfg.shared_prompt_length
        # the query pools real tokens only: a ViLT option (official: pads too); always on CLIP (no official code)
        self.masked_query = cfg.masked_query or cfg.backbone == "clip"
        mem = (cfg.mem_size, cfg.gen_prompt_length, cfg.top_k, cfg.fp32_similarity)
        # init order of the official code: image memories, text memories, shared t, shared v, bottlenecks
        self.gen_v_prompt_memory = nn.ModuleList([PromptMemory(mem[0], mem[1], image, *mem[2:]) for _ in gen_layers])
        self.gen_t_prompt_memory = nn.ModuleList([PromptMemory(mem[0], mem[1], text, *mem[2:]) for _ in gen_layers])
        L = cfg.shared_prompt_length
        self.shared_missing_t = nn.ParameterList([nn.Parameter(torch.randn(L, text) * 0.02) for _ in shared_layers])
        self.shared_missing_v = nn.ParameterList([nn.Parameter(torch.randn(L, text) * 0.02) for _ in shared_layers])
        hidden = text // 16  # official: hidden_size // 16 (the bottleneck_dim key is unused)
        self.bottleneck_texts = nn.ModuleList([Bottleneck(text, hidden, text) for _ in shared_layers])
        self.bottleneck_images = nn.ModuleList([Bottleneck(text, hidden, image) for _ in shared_layers])
        self.bottleneck_images.apply(init_weights)
        self.bottleneck_texts.apply(init_weights)

    def prepare(self, missing_type: Tensor, streams: list[Stream]) -> dict:
        return {"missing_type": missing_type}

    def edit_layers(self, stream: str) -> tuple[int, ...]:
        return tuple(sorted(set(self.gen_layers) | set(self.shared_layers)))

    def pad_reads(self, stream: str) -> int:
        """Pads are read by the queries up to the last generative layer (official); never when masked."""
        return 0 if self.masked_query or not self.gen_layers else max(self.gen_layers)

    def edit(self, stream: Stream, layer: int, state: dict) -> None:
        g = self.gen_layers.index(layer) if layer in self.gen_layers else None
        s = self.shared_layers.index(layer) if layer in self.shared_layers else None
        shared = None
        if s is not None:  # both sides' shared prompts of this layer, computed once per forward
            if ("shared", s) not in state:
                state["shared", s] = shared_prompts(
                    self.shared_missing_t[s], self.shared_missing_v[s], self.bottleneck_texts[s],
                    self.bottleneck_images[s], state["missing_type"],
                )  # fmt: skip
            shared = dict(zip(("text", "image"), state["shared", s]))
        before = self.shared_length * sum(1 for l in self.shared_layers if l < layer)
        for side in stream.sides:
            dtype = side.tokens.dtype
            generative = None
            if g is not None:
                memory = (self.gen_t_prompt_memory if side.name == "text" else self.gen_v_prompt_memory)[g]
                generative = memory(max_query(side.tokens, side.mask, self.masked_query)).to(dtype)
            insert(side, None if shared is None else shared[side.name].to(dtype), generative, before)
