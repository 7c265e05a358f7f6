"""UPMC Food-101: class_idx.json, text.json (file -> title), split.json (train/val/test file lists) and
images/{train,test}/<class>/<file> (val files live under train)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from mdpl.writers.common import Entry, WriterSpec, load_json, split_ids

SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("text", pa.list_(pa.string())),
        ("label", pa.int64()),
        ("image_id", pa.string()),
        ("split", pa.string()),
    ]
)


def class_of(file_name: str) -> str:
    """The class is the file name up to its last "_": "frozen_yogurt_282.jpg" -> "frozen_yogurt"."""
    return file_name[: file_name.rindex("_")]


def list_entries(raw: Path, split: str) -> tuple[list[Entry], list[str]]:
    class_idx = load_json(raw / "class_idx.json")
    texts = load_json(raw / "text.json")
    folder = raw / "images" / ("test" if split == "test" else "train")
    entries, skipped = [], []
    for sample in split_ids(raw / "split.json", split):
        if sample not in texts:  # officially skipped: the sample has no text
            skipped.append(sample)
            continue
        cls = class_of(sample)
        if cls not in class_idx:
            raise KeyError(f"{raw / 'class_idx.json'}: no class {cls!r} (from sample {sample!r})")
        columns = {"text": [texts[sample]], "label": class_idx[cls], "image_id": sample, "split": split}
        entries.append(Entry(sample, folder / cls / sample, columns))
    return entries, skipped


SPEC = WriterSpec(
    name="food101",
    raw_subdir="Food101",
    default_out="./datasets/Food101",
    splits={"train": "food101_train", "val": "food101_val", "test": "food101_test"},
    schema=SCHEMA,
    list_entries=list_entries,
    skip_reason="absent from text.json",
)
