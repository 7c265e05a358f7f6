"""The token sequence a backbone's blocks run over, as the model loop and the prompt methods see it.

A `Stream` is one transformer's input: ViLT has one ("joint": the text side, then the image side); CLIP has two
("text" and "image", one side each). A `Side` is one modality's part of a stream: a prompt region (pieces a
prompt method inserted) in front of the modality's tokens. The stream's sequence is the concatenation, side by
side, of [region | tokens]; prompts are always visible, tokens by their mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mdpl.model.layers import compact


@dataclass
class Side:
    name: str  # "text" or "image"
    tokens: Tensor  # B x N x D
    mask: Tensor  # B x N: 1 = a real token (a key), 0 = padding
    pooled: Tensor | None = None  # B: the index of the token the features are read from (one side per stream)
    region: list[Tensor] = field(default_factory=list)  # prompt pieces, each B x P_i x D, in sequence order

    @property
    def width(self) -> int:
        """Prompt tokens in front of the tokens."""
        return sum(p.shape[1] for p in self.region)

    def keep(self) -> Tensor:
        """B x N, True on the rows anything after the last query of a padded token reads: the real tokens and the
        pooled one."""
        keep = self.mask != 0
        if self.pooled is not None:
            keep = keep.scatter(1, self.pooled[:, None], True)
        return keep

    def compact(self, rows: tuple[Tensor, Tensor]) -> None:
        """Drop the padded tokens: rows = kept_rows(self.keep()) of the tokens as they are now. The pooled index
        follows its token (the kept rows keep their order)."""
        if self.pooled is not None:
            index, _ = rows
            self.pooled = (index == self.pooled[:, None]).int().argmax(dim=1)
        self.tokens, self.mask = compact(self.tokens, self.mask, rows)

    def key_rows(self, rows: tuple[Tensor, Tensor], offset: int) -> tuple[Tensor, Tensor]:
        """(index, mask) of this side's key rows in the whole sequence, the side starting at `offset`: every
        prompt, then the kept tokens (rows = kept_rows(self.keep()) of the tokens not yet compacted)."""
        index, valid = rows
        B, P = index.shape[0], self.width
        prompts = torch.arange(offset, offset + P, device=index.device).expand(B, P)
        mask = torch.cat([valid.new_ones(B, P), self.mask.gather(1, index).bool() & valid], dim=1)
        return torch.cat([prompts, index + offset + P], dim=1), mask


@dataclass
class Stream:
    name: str  # "joint" (ViLT), "text" or "image" (CLIP)
    sides: list[Side]
    causal: bool = False  # CLIP text: each position attends to itself and the positions before it

    @property
    def pooled_side(self) -> Side:
        return next(s for s in self.sides if s.pooled is not None)

    def offset(self, side: Side) -> int:
        """Where `side` starts in the sequence."""
        total = 0
        for s in self.sides:
            if s is side:
                return total
            total += s.width + s.tokens.shape[1]
        raise ValueError(f"{side.name} is not a side of stream {self.name}")

    def pooled_rows(self) -> Tensor:
        """B: the pooled token's position in the sequence."""
        side = self.pooled_side
        return self.offset(side) + side.width + side.pooled

    def sequence(self) -> tuple[Tensor, Tensor]:
        """The whole sequence and its mask, each in one concatenation."""
        x = torch.cat([piece for s in self.sides for piece in (*s.region, s.tokens)], dim=1)
        B = x.shape[0]
        masks = [m for s in self.sides for m in (s.mask.new_ones(B, s.width), s.mask)]
        return x, torch.cat(masks, dim=1)

    def read_back(self, x: Tensor) -> None:
        """Take each side's region (as one piece) and tokens back from the hidden states x."""
        sizes = [n for s in self.sides for n in (s.width, s.tokens.shape[1])]
        parts = x.split(sizes, dim=1)
        for i, side in enumerate(self.sides):
            side.region, side.tokens = [parts[2 * i]], parts[2 * i + 1]
