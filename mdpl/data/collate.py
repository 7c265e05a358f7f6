"""Batching: images onto a zero canvas, texts tokenized, labels and missing codes stacked, missing modalities
substituted (mdpl.data.missing.apply_missing)."""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info

from mdpl.data.missing import apply_missing
from mdpl.data.tokenizers import TextTokenizer


def _canvas(like: torch.Tensor, batch: int, h: int, w: int) -> torch.Tensor:
    """An uninitialised B x 3 x h x w tensor with channels-last strides (the images' own layout, see
    to_uint8_tensor). Inside a loader worker it is put in shared memory from the start (as torch's
    default_collate does), which saves copying the large image batch into shared memory afterwards."""
    if get_worker_info() is None:
        pixels = like.new_empty((batch, h, w, 3))
    else:
        storage = like._typed_storage()._new_shared(batch * h * w * 3, device=like.device)
        pixels = like.new(storage).view(batch, h, w, 3)
    return pixels.permute(0, 3, 1, 2)


def pad_images(images: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """(B, 3, h, w), channels-last strides: each image at the top left of a zero canvas."""
    canvas = _canvas(images[0], len(images), h, w)
    for i, v in enumerate(images):
        vh, vw = v.shape[1:]
        canvas[i, :, :vh, :vw] = v
        canvas[i, :, vh:].zero_()  # zero only the padding: every canvas element is written once
        canvas[i, :, :vh, vw:].zero_()
    return canvas


class Collator:
    """Dataset items -> a batch: image canvases (one per transform key, uint8, see normalize_images) with each
    image's size, token ids and masks of a fixed length, labels, and the missing codes.

    "codes" holds each sample's code in each missing table (T x B). With `substitute` (training: one table) the
    batch is the one its samples are: "missing_type" holds the codes and missing texts are substituted; without
    (evaluation), the evaluator substitutes per table on the device (`apply_missing`)."""

    def __init__(self, tokenizer: TextTokenizer, substitute: bool = True) -> None:
        self.tokenizer, self.substitute = tokenizer, substitute
        self.empty = tokenizer([""])  # the tokens of a missing text

    def __call__(self, items: list[dict]) -> dict:
        views = list(zip(*(it["image"] for it in items)))  # per transform key: the batch's images
        h = max(v.shape[1] for view in views for v in view)  # one canvas size for all keys, as officially
        w = max(v.shape[2] for view in views for v in view)
        ids, masks = self.tokenizer([it["text"] for it in items])
        batch = {
            "image": [pad_images(list(view), h, w) for view in views],
            "image_hw": torch.tensor([list(it["image"][0].shape[1:]) for it in items], dtype=torch.long),
            "text_ids": ids,
            "text_masks": masks,
            "empty_ids": self.empty[0],
            "empty_masks": self.empty[1],
            "label": torch.stack([it["label"] for it in items]),
            "codes": torch.tensor([it["codes"] for it in items], dtype=torch.long).reshape(len(items), -1).T,
        }
        return apply_missing(batch, batch["codes"][0]) if self.substitute else batch
