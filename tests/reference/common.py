"""The references' shared pieces: per-sample attention and blocks, batches, and the one small test recipe."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mdpl.config import make_config
from mdpl.data.tasks import TASKS


def layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def linear(x: Tensor, p: dict, name: str) -> Tensor:
    return x @ p[f"{name}.weight"].t() + p[f"{name}.bias"]


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> Tensor:
    """One head: q Q x d, k and v K x d; visible Q x K booleans (a masked key is left out, not set to -inf)."""
    s = q @ k.t() / math.sqrt(q.shape[1])
    s = s.masked_fill(~visible, float("-inf"))
    e = torch.exp(s - s.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True) @ v


def attention(
    x: Tensor, mask: Tensor, p: dict, pre: str, heads: int, causal: bool = False, prefix: tuple | None = None
) -> Tensor:
    """One sample: x N x D, key mask N (1 visible); causal: position i sees keys j <= i; prefix (keys, values)
    P x D used as they are (no projection), always visible, split into heads like the projected ones."""
    N, D = x.shape
    dh = D // heads
    qkv = linear(x, p, f"{pre}.qkv")
    q, k, v = qkv[:, :D], qkv[:, D : 2 * D], qkv[:, 2 * D :]
    visible = mask.bool()[None, :].expand(N, N)
    if causal:
        visible = visible & torch.ones(N, N, dtype=torch.bool).tril()
    if prefix is not None:
        k, v = torch.cat([prefix[0], k]), torch.cat([prefix[1], v])
        visible = torch.cat([torch.ones(N, prefix[0].shape[0], dtype=torch.bool), visible], dim=1)
    heads_out = [softmax_attention(q[:, h * dh : (h + 1) * dh], k[:, h * dh : (h + 1) * dh],
                                   v[:, h * dh : (h + 1) * dh], visible) for h in range(heads)]  # fmt: skip
    return linear(torch.cat(heads_out, dim=1), p, f"{pre}.proj")


def block(
    x: Tensor,
    mask: Tensor,
    p: dict,
    pre: str,
    heads: int,
    eps: float = 1e-6,
    act=gelu,
    causal: bool = False,
    prefix: tuple | None = None,
) -> Tensor:
    """Pre-norm block: ViLT (eps 1e-6, GELU) or CLIP (eps 1e-5, QuickGELU), in the file names."""
    h = layer_norm(x, p[f"{pre}.norm1.weight"], p[f"{pre}.norm1.bias"], eps)
    x = x + attention(h, mask, p, f"{pre}.attn", heads, causal, prefix)
    y = layer_norm(x, p[f"{pre}.norm2.weight"], p[f"{pre}.norm2.bias"], eps)
    return x + linear(act(linear(y, p, f"{pre}.mlp.fc1")), p, f"{pre}.mlp.fc2")


def normalize(canvas: Tensor, hw: Tensor, missing: Tensor, mean: tuple, std: tuple, dtype=torch.float64) -> Tensor:
    """uint8 canvases -> images: (x / 255 - mean) / std inside each image (computed in float64), 1 inside a missing
    image (missing_type 2), 0 outside; returned in `dtype`."""
    out = torch.zeros(canvas.shape, dtype=torch.float64)
    for b in range(canvas.shape[0]):
        h, w = hw[b].tolist()
        for c in range(3):
            pixels = canvas[b, c, :h, :w].double() / 255
            out[b, c, :h, :w] = 1.0 if int(missing[b]) == 2 else (pixels - mean[c]) / std[c]
    return out.to(dtype)


SMALL = dict(  # the one small test model: D=32, 4 layers, 16-pixel patches, prompts at layers 0 and 1
    hidden_size=32,
    num_heads=4,
    num_layers=4,
    image_size=64,
    patch_size=16,
    max_text_len=10,
    vocab_size=50,
    gen_prompt_layers=[0, 1],
    shared_prompt_layers=[0, 1],
    gen_prompt_length=3,
    shared_prompt_length=2,
    mem_size=6,
    top_k=3,
    prompt_length=6,
    prompt_layers=[0, 1],
    drop_rate=0.0,
    patch_order="fixed",
    clip_width=64,
    clip_layers=3,
    clip_patch_size=16,
    clip_image_size=32,
    clip_text_width=64,
    clip_text_layers=3,
    clip_context_length=10,
    clip_vocab_size=60,
    clip_embed_dim=16,
)


def base_config(task: str = "food101", **overrides) -> dict:
    """The official defaults for one task (its dataset and loss_names entry; itm/mlm off), with a batch size set
    so that the config validates, and `overrides` applied as command-line updates."""
    loss_names = {"itm": 0, "mlm": 0, task: 1, **overrides.pop("loss_names", {})}
    updates = {"datasets": [TASKS[task].dataset], "per_gpu_batchsize": 1, **overrides, "loss_names": loss_names}
    return make_config(**updates)


def small_config(task: str = "food101", **overrides) -> dict:
    """base_config with the SMALL model, then `overrides`."""
    return base_config(task, **{**SMALL, **overrides})


def small_hf_config(**overrides):
    """A Hugging Face ViltConfig of the SMALL model's shape (weight conversion tests)."""
    from transformers import ViltConfig

    return ViltConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, image_size=64,
        patch_size=16, max_position_embeddings=10, vocab_size=50, **overrides,
    )  # fmt: skip


def make_batch(
    config: dict, batch_size: int = 3, image_hw: tuple[int, int] = (64, 96), seed: int = 0, task: str = "food101"
) -> dict:
    """A batch as the loader gives it: uint8 images of different sizes on a zero canvas (CLIP: full squares),
    texts of different lengths (CLIP: start, ids, end-of-text, then zeros), missing types 0, 1, 2, ..."""
    g = torch.Generator().manual_seed(seed)
    clip = config.get("backbone") == "clip"
    H, W = (config["clip_image_size"],) * 2 if clip else image_hw
    P = config["patch_size"]
    T = config["clip_context_length"] if clip else config["max_text_len"]
    images = torch.zeros(batch_size, 3, H, W, dtype=torch.uint8)
    masks = torch.zeros(batch_size, T, dtype=torch.long)
    hw = []
    for b in range(batch_size):
        h = H if b % 2 == 0 or clip else max(P, (H // 2) // P * P)
        w = W if b % 3 != 1 or clip else max(P, (W // 2) // P * P)
        images[b, :, :h, :w] = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        hw.append([h, w])
        masks[b, : max(2, T - 3 * b)] = 1
    vocab = config["clip_vocab_size"] if clip else config["vocab_size"]
    ids = torch.randint(1, vocab - 1, masks.shape, generator=g) * masks
    if clip:  # end-of-text is the largest id, at the last real position
        ids[torch.arange(batch_size), masks.sum(1) - 1] = vocab - 1
    if task == "mmimdb":
        label = (torch.rand(batch_size, config["mmimdb_class_num"], generator=g) > 0.7).float()
    else:
        label = torch.randint(0, config[f"{task}_class_num"], (batch_size,), generator=g)
    return {
        "image": [images],
        "image_hw": torch.tensor(hw),
        "text_ids": ids,
        "text_masks": masks,
        "label": label,
        "missing_type": torch.arange(batch_size) % 3,
    }
