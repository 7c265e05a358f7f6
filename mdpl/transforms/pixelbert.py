"""The official "pixelbert" image transform: min/max resize to multiples of 32, then [-1, 1] tensors."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MULTIPLE = 32  # official: sides are floored to a multiple of 32 (the ViT-B/32 patch)


def resized_hw(w: int, h: int, shorter: int) -> tuple[int, int]:
    """(height, width) after the official resize: shorter side -> `shorter`, longer side capped at
    int(1333 / 800 * shorter), rounded, then floored to a multiple of 32.

    Deviation (docs/official-behaviour.md#official-defects-and-our-fixes, D22): an aspect ratio beyond ~20:1
    floors a side to 0 officially (a crash later); here each side is clamped to at least one patch (32),
    which changes nothing for any other image.
    """
    longer = int(1333 / 800 * shorter)
    scale = shorter / min(w, h)
    nh, nw = (shorter, scale * w) if h < w else (scale * h, shorter)
    if max(nh, nw) > longer:
        scale = longer / max(nh, nw)
        nh, nw = nh * scale, nw * scale
    nh, nw = int(nh + 0.5), int(nw + 0.5)
    return max(MULTIPLE, nh // MULTIPLE * MULTIPLE), max(MULTIPLE, nw // MULTIPLE * MULTIPLE)


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """ToTensor then Normalize(0.5, 0.5), with the same float operations (x / 255 - 0.5) / 0.5."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # a writable copy, as ToTensor
    return x.float().div_(255).sub_(0.5).div_(0.5)


class PixelBert:
    """"pixelbert": PIL BICUBIC resize (see resized_hw), ToTensor, Normalize(0.5, 0.5). Expects RGB."""

    random = False  # draws no random numbers, so output shapes are known from the image size alone

    def __init__(self, size: int = 384) -> None:
        self.size = size

    def output_hw(self, w: int, h: int) -> tuple[int, int]:
        return resized_hw(w, h, self.size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        nh, nw = self.output_hw(*img.size)
        return to_normalized_tensor(img.resize((nw, nh), resample=Image.BICUBIC))
