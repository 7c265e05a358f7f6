"""ViLT's pooler and the BERT-style init the official code applies to poolers and heads."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


class Pooler(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.activation = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        """x: B x D (the token to pool, already selected)."""
        return self.activation(self.dense(x))


def init_weights(module: nn.Module) -> None:
    """Official ViLT init: Linear/Embedding N(0, 0.02), biases 0, LayerNorm (1, 0). Use with .apply()."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
