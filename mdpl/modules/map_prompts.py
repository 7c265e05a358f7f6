"""MAP baseline (missing-aware prompts, Lee et al., CVPR 2023) as a prompt part on the same frozen ViLT.

Three prompt tensors, one per missing type, each (n, L, D) with n = len(prompt_layers) if
multi_layer_prompt else 1 (then the one prompt is used at every prompt layer). A sample's prompts are
picked by its missing_type code (0 complete, 1 text missing, 2 image missing).

- prompt_type "input": at each layer l in prompt_layers the prompt for l is prepended to the sequence
  before the block, so after the loop x = [P_last ... P_0, TEXT, IMAGE]; the prompts are always visible.
  cls comes from the text [CLS] at position n_inserted.
- prompt_type "attention" (prefix tuning): at layer l the block's keys get prompt[:, :L/2] and its
  values prompt[:, L/2:] (the whole prompt for both when learnt_p is False), unprojected, in front of the
  projected keys/values; nothing is inserted, so cls comes from position 0 (the text [CLS]).
See docs/official-behaviour.md#map-baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mdpl.modules.prompts import check_missing_type
from mdpl.modules.vilt import compact, kept_rows

# Official attribute names (MAP checkpoints load as they are), in missing_type code order.
PROMPT_NAMES = ("complete_prompt", "missing_text_prompt", "missing_img_prompt")
# The row set to 1 at init, per tensor (official: complete 0, text missing 2, image missing 1).
_INIT_ROWS = (0, 2, 1)


class MAPPrompts(nn.Module):
    def __init__(
        self,
        dim: int,
        layers: tuple[int, ...],
        length: int,
        prompt_type: str = "input",
        learnt_p: bool = True,
        multi_layer_prompt: bool = True,
    ) -> None:
        super().__init__()
        self.layers, self.prompt_type = tuple(layers), prompt_type
        self.learnt_p, self.multi_layer = learnt_p, multi_layer_prompt
        n = len(layers) if multi_layer_prompt else 1
        prefix = prompt_type == "attention" and learnt_p
        for name, row in zip(PROMPT_NAMES, _INIT_ROWS):
            p = torch.zeros(n, length, dim)
            p[:, row : row + 1] = 1  # a slice, as the official code: a row past the end is simply not set
            if prefix:  # the value half gets its own marker row
                p[:, length // 2 + row : length // 2 + row + 1] = 1
            self.register_parameter(name, nn.Parameter(p, requires_grad=learnt_p))

    def select(self, missing_type: Tensor) -> Tensor:
        """(B,) missing_type codes -> (B, n, L, D) prompts, gathered in one indexing op."""
        check_missing_type(missing_type)
        bank = torch.stack([getattr(self, name) for name in PROMPT_NAMES])  # (3, n, L, D)
        return bank[missing_type.long()]

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
        """Returns (x, start of the text tokens = index of the text [CLS], start of the image tokens).

        prune=True (exact up to float rounding): nothing reads a pad row (pads are masked keys and there is
        no query), so [PAD] text tokens and padded image patches are dropped before block 0; the last block
        computes the text [CLS] row only. Returns (x B x 1 x D = that row, 0, None)."""
        prompts = self.select(missing_type)
        if prune:
            text, text_masks = compact(text, text_masks, kept_rows(text_masks, keep_first=True))
            image, image_masks = compact(image, image_masks, kept_rows(image_masks))
        # official: the embeddings are detached (frozen anyway; prompts still get gradients)
        x = torch.cat([text, image], dim=1).detach()
        mask = torch.cat([text_masks, image_masks], dim=1)
        inserted, last = 0, len(blocks) - 1
        for i, block in enumerate(blocks):
            if i not in self.layers:
                x = block(x, mask, row=inserted if prune and i == last else None)
                continue
            p = prompts[:, self.layers.index(i) if self.multi_layer else 0].to(x.dtype)  # (B, L, D)
            if self.prompt_type == "input":
                x = torch.cat([p, x], dim=1)
                mask = torch.cat([mask.new_ones(p.shape[:2]), mask], dim=1)
                inserted += p.shape[1]
                kv = None
            else:
                half = p.shape[1] // 2
                kv = (p[:, :half], p[:, half:]) if self.learnt_p else (p, p)
            row = inserted if prune and i == last else None  # the text [CLS]: the only row the pooler reads
            x = block(x, mask, prefix_kv=kv, row=row)
        if prune:
            return x, 0, None
        return x, inserted, inserted + text.shape[1]
