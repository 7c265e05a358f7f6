"""MDPL's prompt parts: the prompt memory (generative prompts) and the missing-type shared prompts."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


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


def layer_list(config: dict, key: str) -> list[int]:
    """config[key] checked as a list of unique block numbers in [0, num_layers) (official: only [0..n-1]
    works, since its lists are indexed by layer number)."""
    layers = config[key]
    n = config["num_layers"]
    if not isinstance(layers, (list, tuple)) or not all(isinstance(i, int) and 0 <= i < n for i in layers):
        raise ValueError(f"config {key}={layers!r}: expected a list of layer numbers in [0, {n})")
    if len(set(layers)) != len(layers):
        raise ValueError(f"config {key}={layers!r}: layer numbers must be unique")
    return list(layers)


def check_missing_type(missing_type: Tensor) -> None:
    """Codes are 0 complete, 1 text missing, 2 image missing (official: another code silently reuses the
    previous sample's prompt)."""
    bad = (missing_type < 0) | (missing_type > 2)
    if bool(bad.any()):
        raise ValueError(f"missing_type codes must be 0, 1 or 2, got {missing_type[bad].tolist()}")


def shared_prompts(a_t: Tensor, a_v: Tensor, f_text: nn.Module, f_image: nn.Module,
                   missing_type: Tensor) -> tuple[Tensor, Tensor]:
    """The shared prompts chosen by missing type, batched: base 0 -> A_t + A_v, 1 (text missing) -> A_t,
    2 (image missing) -> A_v; each of the three bases goes through the bottlenecks once, then samples
    gather theirs. Returns (S_t, S_v), each B x L x D. Codes must be valid (see check_missing_type)."""
    bases = torch.stack([a_t + a_v, a_t, a_v])  # 3 x L x D
    return f_text(bases)[missing_type], f_image(bases)[missing_type]
