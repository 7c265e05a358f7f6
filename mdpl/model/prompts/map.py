"""MAP baseline (missing-aware prompts, Lee et al., CVPR 2023) as a prompt method on either backbone.

Per stream, three prompt tensors, one per missing type, each (n, L, D) with n = len(prompt_layers) if
multi_layer_prompt else 1 (then the one prompt serves every prompt layer); a sample's prompts are picked by its
missing code (0 complete, 1 text missing, 2 image missing). On ViLT (one stream) they keep the official names
(complete_prompt, missing_text_prompt, missing_img_prompt); on CLIP each tower has its own, named with the
tower (complete_prompt_text, ..., complete_prompt_image, ...) and of that tower's width.

- prompt_type "input": before each prompt layer the layer's prompt is put in front of the whole sequence, so
  after the loop x = [P_last ... P_0, tokens]; prompts are always visible.
- prompt_type "attention" (prefix tuning): at each prompt layer the block's keys get prompt[:, :L/2] and its
  values prompt[:, L/2:] (the whole prompt for both when learnt_p is False), unprojected, in front of the
  projected keys and values; nothing is inserted.
See docs/official-behaviour.md#map-baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mdpl.model.config import ModelConfig
from mdpl.model.prompts.base import PromptMethod
from mdpl.model.stream import Stream

# Official attribute names (MAP checkpoints load as they are), in missing_type code order.
PROMPT_NAMES = ("complete_prompt", "missing_text_prompt", "missing_img_prompt")
# The row set to 1 at init, per tensor (official: complete 0, text missing 2, image missing 1).
_INIT_ROWS = (0, 2, 1)


class MAPPrompts(PromptMethod):
    def __init__(self, cfg: ModelConfig, layout: dict[str, dict[str, int]]) -> None:
        super().__init__(cfg, layout)
        self.layers, self.prompt_type = cfg.prompt_layers, cfg.prompt_type
        self.learnt_p, self.multi_layer = cfg.learnt_p, cfg.multi_layer_prompt
        n, L = len(self.layers) if self.multi_layer else 1, cfg.prompt_length
        prefix = self.prompt_type == "attention" and self.learnt_p
        self.names = {}  # stream -> its three parameter names
        for stream, sides in layout.items():
            self.names[stream] = [name + ("" if len(layout) == 1 else f"_{stream}") for name in PROMPT_NAMES]
            dim = next(iter(sides.values()))
            for name, row in zip(self.names[stream], _INIT_ROWS):
                p = torch.zeros(n, L, dim)
                p[:, row : row + 1] = 1  # a slice, as the official code: a row past the end is simply not set
                if prefix:  # the value half gets its own marker row
                    p[:, L // 2 + row : L // 2 + row + 1] = 1
                self.register_parameter(name, nn.Parameter(p, requires_grad=self.learnt_p))

    def prepare(self, missing_type: Tensor, streams: list[Stream]) -> dict:
        """Each stream's (B, n, L, D) prompts, gathered by missing type in one indexing op."""
        return {s: torch.stack([getattr(self, n) for n in names])[missing_type] for s, names in self.names.items()}

    def _prompt(self, stream: str, layer: int, state: dict) -> Tensor:
        return state[stream][:, self.layers.index(layer) if self.multi_layer else 0]

    def edit_layers(self, stream: str) -> tuple[int, ...]:
        return self.layers if self.prompt_type == "input" else ()

    def edit(self, stream: Stream, layer: int, state: dict) -> None:
        first = stream.sides[0]
        first.region = [self._prompt(stream.name, layer, state).to(first.tokens.dtype), *first.region]

    def prefix_kv(self, stream: str, layer: int, state: dict) -> tuple[Tensor, Tensor] | None:
        if self.prompt_type != "attention" or layer not in self.layers:
            return None
        p = self._prompt(stream, layer, state)
        half = p.shape[1] // 2
        return (p[:, :half], p[:, half:]) if self.learnt_p else (p, p)
