"""Batching: images onto a zero canvas, texts tokenized to max_text_len, labels and missing codes stacked."""

from __future__ import annotations

import math

import torch
from torch.utils.data import get_worker_info
from transformers import PreTrainedTokenizerBase


def _batch_tensor(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor; inside a loader worker it is put in shared memory from the start (as torch's
    default_collate does), which saves copying the large image batch into shared memory afterwards."""
    if get_worker_info() is None:
        return like.new_empty(shape)
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).view(shape)


def pad_images(images: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
    """(B, 3, h, w): each image at the top left of a zero canvas."""
    canvas = _batch_tensor(images[0], (len(images), 3, h, w))
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
        enc = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_text_len, return_tensors="pt"
        )
        return {
            "image": [pad_images(list(view), h, w) for view in views],  # uint8; see normalize_pixels
            "image_hw": torch.tensor([list(it["image"][0].shape[1:]) for it in items], dtype=torch.long),
            "text": texts,
            "text_ids": enc["input_ids"],
            "text_masks": enc["attention_mask"],
            "label": torch.stack([it["label"] for it in items]),
            "missing_type": torch.tensor([it["missing_type"] for it in items], dtype=torch.long),
        }
