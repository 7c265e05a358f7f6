"""DCP (Deep Correlated Prompting, NeurIPS 2024) on CLIP: correlated, modal-common and dynamic prompts.

With n = prompt_length / 3 tokens per kind and depth = len(prompt_layers) (layers 0 .. depth-1):
- Correlated prompts, computed from parameters alone before either tower runs. Layer 0: the initial image and
  text prompts chosen by missing type (type 0: both "complete"; 1, text missing: the text "missing" one; 2,
  image missing: the image "missing" one) are concatenated (n x (Dv + Dt)) and pass through a LayerNorm and an
  MLP per side ((Dv + Dt) -> (Dv + Dt) / 16 -> GELU -> D_side). Layer i: the same, with its own LayerNorms and
  MLPs, on layer i-1's generated (image, text) prompts. All MLPs start as copies of one.
- Modal-common prompts: one of three (n x Dt) parameters by missing type, through one MLP per side
  (Dt -> Dt / 16 -> GELU -> D_side); inserted at layer 0 only.
- Dynamic prompts: per tower three (n x D) tensors by missing type act as queries of a one-head attention
  (`attn_prompt_{text,image}`, with biases) over that tower's block-0 input tokens; inserted as they come out.
Layer 0 puts [correlated | common | dynamic] in front of each tower's tokens; layers 1 .. depth-1 replace the
first n of them with that layer's correlated prompts; the rest carry the previous layer's outputs.

Faithful by default, with a switch for each official defect (docs/official-behaviour.md#dcp-on-clip):
- dcp_dynamic_prompts="official": the dynamic prompts are drawn from torch's global RNG when the model is built
  and never saved, so a checkpoint alone cannot restore them (an evaluation redraws them from its own seed, as
  the official test-only run does). "saved" keeps them in the state dict, so evaluation uses the trained ones.
- dcp_masked_prompt_attention=False: the text tower's prompt attention reads the padding after end-of-text, as
  officially; True leaves it out.
Parameter names follow the official prompt learner's (visual_prompt_complete, compound_prompt_projections_text.0.0,
layernorm_image.0, common_prompt_projection_text.0, ...), so its checkpoints map by prefix alone.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mdpl.model.config import ModelConfig
from mdpl.model.layers import Bottleneck
from mdpl.model.prompts.base import PromptMethod
from mdpl.model.stream import Stream


class PromptAttention(nn.Module):
    """nn.MultiheadAttention(dim, 1) as DCP uses it (same parameter names and initialisation): queries from
    one input, keys and values from another, one head, biases."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        D = query.shape[-1]
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:D], b[:D])
        k, v = F.linear(tokens, w[D:], b[D:]).chunk(2, dim=-1)
        mask = None if key_mask is None else key_mask.bool()[:, None, :]
        return self.out_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def _mlp(dim: int, out: int) -> Bottleneck:
    return Bottleneck(dim, dim // 16, out)


class DCPPrompts(PromptMethod):
    def __init__(self, cfg: ModelConfig, layout: dict[str, dict[str, int]]) -> None:
        super().__init__(cfg, layout)
        text, image = layout["text"]["text"], layout["image"]["image"]
        n, depth = cfg.prompt_length // 3, len(cfg.prompt_layers)
        self.n, self.depth = n, depth
        self.masked_attention = cfg.dcp_masked_prompt_attention

        def prompt(width: int) -> nn.Parameter:
            return nn.Parameter(nn.init.normal_(torch.empty(n, width), std=0.02))

        self.visual_prompt_complete, self.visual_prompt_missing = prompt(image), prompt(image)
        self.text_prompt_complete, self.text_prompt_missing = prompt(text), prompt(text)
        self.common_prompt_complete, self.common_prompt_image, self.common_prompt_text = (prompt(text) for _ in "123")
        both = text + image
        self.compound_prompt_projections_text = _clones(_mlp(both, text), depth)
        self.layernorm_text = nn.ModuleList([nn.LayerNorm(both) for _ in range(depth)])
        self.compound_prompt_projections_image = _clones(_mlp(both, image), depth)
        self.layernorm_image = nn.ModuleList([nn.LayerNorm(both) for _ in range(depth)])
        self.common_prompt_projection_image = _mlp(text, image)
        self.common_prompt_projection_text = _mlp(text, text)
        self.attn_prompt_text, self.attn_prompt_image = PromptAttention(text), PromptAttention(image)
        persistent = cfg.dcp_dynamic_prompts == "saved"
        for side, width in (("image", image), ("text", text)):  # drawn at build, from the global RNG (official)
            for kind in ("complete", "image", "text"):
                value = nn.init.normal_(torch.empty(n, width), std=0.02)
                self.register_buffer(f"prompts_dynamic_{kind}_{side}", value, persistent=persistent)

    def prepare(self, missing_type: Tensor, streams: list[Stream]) -> dict:
        """Every layer's correlated prompts, the common prompts and the dynamic queries of each sample, chosen
        by missing type: computed for the three types once, then gathered."""
        image = torch.stack([self.visual_prompt_complete, self.visual_prompt_complete, self.visual_prompt_missing])
        text = torch.stack([self.text_prompt_complete, self.text_prompt_missing, self.text_prompt_complete])
        correlated = []
        for i in range(self.depth):
            both = torch.cat([image, text], dim=-1)
            image = self.compound_prompt_projections_image[i](self.layernorm_image[i](both))
            text = self.compound_prompt_projections_text[i](self.layernorm_text[i](both))
            correlated.append({"image": image[missing_type], "text": text[missing_type]})
        common = torch.stack([self.common_prompt_complete, self.common_prompt_image, self.common_prompt_text])
        state = {
            "correlated": correlated,
            "common": {
                "image": self.common_prompt_projection_image(common)[missing_type],
                "text": self.common_prompt_projection_text(common)[missing_type],
            },
        }
        for side in ("image", "text"):  # type 1 (text missing) queries with the "image" prompts, 2 with "text"
            kinds = [getattr(self, f"prompts_dynamic_{kind}_{side}") for kind in ("complete", "image", "text")]
            state[f"dynamic_{side}"] = torch.stack(kinds)[missing_type]
        return state

    def edit_layers(self, stream: str) -> tuple[int, ...]:
        return tuple(range(self.depth))

    def edit(self, stream: Stream, layer: int, state: dict) -> None:
        (side,) = stream.sides
        dtype = side.tokens.dtype
        correlated = state["correlated"][layer][side.name].to(dtype)
        if layer == 0:
            attention = self.attn_prompt_text if side.name == "text" else self.attn_prompt_image
            key_mask = side.mask if self.masked_attention and side.name == "text" else None
            dynamic = attention(state[f"dynamic_{side.name}"], side.tokens, key_mask).to(dtype)
            side.region = [correlated, state["common"][side.name].to(dtype), dynamic]
        else:
            (old,) = side.region
            side.region = [correlated, old[:, self.n :]]


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    """n deep copies of one module: every layer starts from the same weights (official)."""
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])
