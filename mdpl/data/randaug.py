"""RandAugment(n=2, m=9) over 14 PIL operations, as prepended by the official "pixelbert_randaug".

Unused by the official MDPL configs; provided so that config value works. Each call draws its n operations
with the global `random` (random.choices), like the official version, and flips signed magnitudes at random.
"""

from __future__ import annotations

import random

from PIL import Image, ImageEnhance, ImageOps

FILL = (128, 128, 128)


def _signed(v: float) -> float:
    return -v if random.random() < 0.5 else v


def _affine(img: Image.Image, matrix: tuple) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, matrix, fillcolor=FILL)


def _solarize_add(img: Image.Image, v: float) -> Image.Image:
    lut = [min(255, i + int(v)) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


# (operation(img, v), min, max): magnitude v = m / 30 * (max - min) + min
OPS = [
    (lambda img, v: ImageOps.autocontrast(img), 0, 1),
    (lambda img, v: ImageOps.equalize(img), 0, 1),
    (lambda img, v: img.rotate(_signed(v), fillcolor=FILL), 0, 30),
    (lambda img, v: ImageOps.posterize(img, max(1, int(v))), 0, 4),
    (lambda img, v: ImageOps.solarize(img, 256 - v), 0, 256),
    (_solarize_add, 0, 110),
    (lambda img, v: ImageEnhance.Color(img).enhance(v), 0.1, 1.9),
    (lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.1, 1.9),
    (lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.1, 1.9),
    (lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.1, 1.9),
    (lambda img, v: _affine(img, (1, _signed(v), 0, 0, 1, 0)), 0.0, 0.3),  # shear x
    (lambda img, v: _affine(img, (1, 0, 0, _signed(v), 1, 0)), 0.0, 0.3),  # shear y
    (lambda img, v: _affine(img, (1, 0, _signed(v), 0, 1, 0)), 0.0, 100),  # translate x (pixels)
    (lambda img, v: _affine(img, (1, 0, 0, 0, 1, _signed(v))), 0.0, 100),  # translate y (pixels)
]


class RandAugment:
    def __init__(self, n: int = 2, m: int = 9) -> None:
        self.n, self.m = n, m

    def __call__(self, img: Image.Image) -> Image.Image:
        for op, lo, hi in random.choices(OPS, k=self.n):
            img = op(img, self.m / 30 * (hi - lo) + lo)
        return img
