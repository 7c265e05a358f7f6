"""Image transforms by config key, and the normalisation the model applies on its device.

The loader ships each transformed image as uint8 (a quarter of the float32 bytes) in PIL's H x W x 3 order
(channels-last strides); `normalize_images` turns a batch canvas into the model's input on the device with the
same float32 operations as torchvision's ToTensor + Normalize, so the values are identical. It is also where
a missing image becomes its placeholder, all ones after normalisation (see mdpl.data.missing).

- "pixelbert" (ViLT): shorter side to `size`, longer side capped at int(1333 / 800 * size), both floored to a
  multiple of 32, bicubic; normalised with mean = std = 0.5 (values in [-1, 1]).
- "pixelbert_randaug": RandAugment(2, 9) on the PIL image, then "pixelbert".
- "clip" (CLIP): torchvision's Resize(size, bicubic) of the shorter side, CenterCrop(size); CLIP's mean and std.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mdpl.data.randaug import RandAugment

MULTIPLE = 32  # pixelbert: sides are floored to a multiple of 32 (the ViT-B/32 patch)
PIXELBERT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
MISSING_VALUE = 1.0  # a missing image is all ones after normalisation (the official placeholder)


def resized_hw(w: int, h: int, shorter: int) -> tuple[int, int]:
    """(height, width) after the pixelbert resize: shorter side -> `shorter`, longer side capped at
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


def to_uint8_tensor(img: Image.Image) -> Tensor:
    """3 x H x W uint8, a writable copy of the RGB pixels kept in PIL's H x W x 3 order (channels-last strides):
    the channel transpose is left to the device (normalize_images) and the collate copies whole pixel rows."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


class PixelBert:
    """ "pixelbert": PIL bicubic resize (see resized_hw) to a uint8 tensor. Expects RGB."""

    random = False  # draws no random numbers, so output shapes are known from the image size alone

    def __init__(self, size: int = 384) -> None:
        self.size = size

    def output_hw(self, w: int, h: int) -> tuple[int, int]:
        return resized_hw(w, h, self.size)

    def __call__(self, img: Image.Image) -> Tensor:
        nh, nw = self.output_hw(*img.size)
        if img.size != (nw, nh):  # PIL's resize to the same size is a plain copy
            img = img.resize((nw, nh), resample=Image.BICUBIC)
        return to_uint8_tensor(img)


class PixelBertRandAug(PixelBert):
    """ "pixelbert_randaug": RandAugment(2, 9) on the PIL image, then "pixelbert"."""

    random = True

    def __init__(self, size: int = 384) -> None:
        super().__init__(size)
        self.randaug = RandAugment(2, 9)

    def __call__(self, img: Image.Image) -> Tensor:
        return super().__call__(self.randaug(img))


class ClipTransform:
    """ "clip": torchvision's Resize(size, BICUBIC) (shorter side to size, the other int(size * long / short))
    then CenterCrop(size), on the RGB image, as uint8."""

    random = False

    def __init__(self, size: int = 224) -> None:
        self.size = size

    def output_hw(self, w: int, h: int) -> tuple[int, int]:
        return self.size, self.size

    def __call__(self, img: Image.Image) -> Tensor:
        w, h, s = *img.size, self.size
        short, long = (w, h) if w <= h else (h, w)
        if short != s:  # torchvision: the shorter side to s, the longer int(s * long / short)
            long = int(s * long / short)
            img = img.resize((s, long) if w <= h else (long, s), resample=Image.BICUBIC)
        w, h = img.size
        if (w, h) != (s, s):  # torchvision's CenterCrop: offsets rounded half to even
            top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
            img = img.crop((left, top, left + s, top + s))
        return to_uint8_tensor(img)


TRANSFORMS = {"pixelbert": PixelBert, "pixelbert_randaug": PixelBertRandAug, "clip": ClipTransform}


def keys_to_transforms(keys: list[str], size: int) -> list:
    """One transform per key (config train_transform_keys / val_transform_keys), at the image size."""
    return [TRANSFORMS[k](size) for k in keys]


def image_area(canvas: Tensor, image_hw: Tensor) -> Tensor:
    """B x 1 x H x W, True where each canvas holds its image (the top-left image_hw[b] = (h, w) corner)."""
    H, W = canvas.shape[-2:]
    h, w = image_hw[:, 0].to(canvas.device), image_hw[:, 1].to(canvas.device)
    rows = torch.arange(H, device=canvas.device)[None, :, None] < h[:, None, None]
    cols = torch.arange(W, device=canvas.device)[None, None, :] < w[:, None, None]
    return (rows & cols)[:, None]


def normalize_images(
    canvas: Tensor, image_hw: Tensor, mean_std: tuple, image_missing: Tensor | None = None, dtype=torch.float32
) -> Tensor:
    """uint8 canvases B x 3 x H x W (each image top-left, size image_hw[b] = (h, w)) -> `dtype` (at least float32)
    with zeros outside each image: (x / 255 - mean) / std as ToTensor + Normalize compute it, and MISSING_VALUE
    inside the images of the samples where `image_missing` (B, bool) is True."""
    dtype = torch.promote_types(dtype, torch.float32)
    mean, std = (torch.tensor(v, dtype=dtype, device=canvas.device)[:, None, None] for v in mean_std)
    x = canvas.to(dtype, memory_format=torch.contiguous_format)  # channels-last canvases transposed here
    inside = image_area(canvas, image_hw)
    x = x.div_(255).sub_(mean).div_(std).mul_(inside)
    if image_missing is not None:  # only the missing images' rows are rewritten
        x[image_missing] = inside[image_missing].to(dtype) * MISSING_VALUE
    return x
