"""The official "pixelbert" image transform: min/max resize to multiples of 32, then [-1, 1] values.

The loader ships the resized image as uint8 (a quarter of the float32 bytes) and the model normalises it on
its device with `normalize_pixels`: the same float32 operations as ToTensor + Normalize(0.5, 0.5), so the
values are identical.
"""

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


MISSING_PIXEL = 255  # a missing image is all ones after normalisation: (255 / 255 - 0.5) / 0.5 = 1


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """3 x H x W uint8, a writable copy of the RGB pixels kept in PIL's H x W x 3 order (channels-last strides):
    the channel transpose is left to the device (normalize_pixels), the collate copies whole pixel rows, and
    the loader saves a strided copy of every image (a fifth of its time)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def normalize_pixels(images: torch.Tensor, image_hw: torch.Tensor) -> torch.Tensor:
    """uint8 canvases B x 3 x H x W (each image top-left, size image_hw[b] = (h, w)) -> float32 in [-1, 1] with
    zeros outside each image: ToTensor + Normalize(0.5, 0.5) as (x / 255 - 0.5) / 0.5, then the zero canvas
    padding that the model reads as "no patch" (a real pixel never normalises to a zero channel sum)."""
    x = images.to(torch.float32, memory_format=torch.contiguous_format)  # channels-last canvases transposed here
    return x.div_(255).sub_(0.5).div_(0.5).mul_(image_area(images, image_hw))


def image_area(canvas: torch.Tensor, image_hw: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W, True where each canvas holds its image (the top-left image_hw[b] = (h, w) corner)."""
    H, W = canvas.shape[-2:]
    h, w = image_hw[:, 0].to(canvas.device), image_hw[:, 1].to(canvas.device)
    rows = torch.arange(H, device=canvas.device)[None, :, None] < h[:, None, None]
    cols = torch.arange(W, device=canvas.device)[None, None, :] < w[:, None, None]
    return (rows & cols)[:, None]


class PixelBert:
    """ "pixelbert": PIL BICUBIC resize (see resized_hw) to a uint8 tensor; ToTensor + Normalize(0.5, 0.5)
    happen on the model's device (normalize_pixels). Expects RGB."""

    random = False  # draws no random numbers, so output shapes are known from the image size alone

    def __init__(self, size: int = 384) -> None:
        self.size = size

    def output_hw(self, w: int, h: int) -> tuple[int, int]:
        return resized_hw(w, h, self.size)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        nh, nw = self.output_hw(*img.size)
        if img.size != (nw, nh):  # PIL's resize to the same size is a plain copy
            img = img.resize((nw, nh), resample=Image.BICUBIC)
        return to_uint8_tensor(img)
