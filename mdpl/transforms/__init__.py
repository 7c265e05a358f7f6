"""Image transforms by official key: "pixelbert" and "pixelbert_randaug"."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from mdpl.transforms.pixelbert import MISSING_PIXEL, PixelBert, image_area, normalize_pixels, resized_hw
from mdpl.transforms.randaug import RandAugment


class PixelBertRandAug(PixelBert):
    """ "pixelbert_randaug": RandAugment(2, 9) on the PIL image, then "pixelbert"."""

    random = True

    def __init__(self, size: int = 384) -> None:
        super().__init__(size)
        self.randaug = RandAugment(2, 9)

    def __call__(self, img: Image.Image):
        return super().__call__(self.randaug(img))


TRANSFORMS: dict[str, Callable[[int], PixelBert]] = {"pixelbert": PixelBert, "pixelbert_randaug": PixelBertRandAug}


def keys_to_transforms(keys: list[str], size: int) -> list[PixelBert]:
    """One transform per key (config train_transform_keys / val_transform_keys), at config image_size."""
    unknown = [k for k in keys if k not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform keys {unknown}; expected some of {sorted(TRANSFORMS)}")
    return [TRANSFORMS[k](size) for k in keys]


__all__ = [
    "image_area",
    "MISSING_PIXEL",
    "normalize_pixels",
    "TRANSFORMS",
    "PixelBert",
    "PixelBertRandAug",
    "RandAugment",
    "keys_to_transforms",
    "resized_hw",
]
