"""Batching: images onto a zero canvas, texts tokenized to max_text_len, labels and missing codes stacked."""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info
from transformers import PreTrainedTokenizerBase


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
    """Turns dataset items into a batch: image canvases (one per transform key), token ids and masks padded
    to max_text_len, labels and missing codes (see DATA.md). No MLM masking: no objective here reads it."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_text_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len

    def __call__(self, items: list[dict]) -> dict:
        views = list(zip(*(it["image"] for it in items)))  # per transform key: the batch's images
        h = max(v.shape[1] for view in views for v in view)  # one canvas size for all keys, as officially
        w = max(v.shape[2] for view in views for v in view)
        texts = [it["text"] for it in items]
        enc = self.tokenizer(  # numpy, then shared: twice as fast as return_tensors="pt" (torch.tensor of lists)
            texts, padding="max_length", truncation=True, max_length=self.max_text_len, return_tensors="np"
        )
        return {
            "image": [pad_images(list(view), h, w) for view in views],  # uint8; see normalize_pixels
            "image_hw": torch.tensor([list(it["image"][0].shape[1:]) for it in items], dtype=torch.long),
            "text": texts,
            "text_ids": torch.from_numpy(enc["input_ids"]).long(),
            "text_masks": torch.from_numpy(enc["attention_mask"]).long(),
            "label": torch.stack([it["label"] for it in items]),
            "missing_type": torch.tensor([it["missing_type"] for it in items], dtype=torch.long),
        }
