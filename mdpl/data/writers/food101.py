"""UPMC Food-101: class_idx.json, text.json (file -> title), split.json (train/val/test file lists) and
images/{train,test}/<class>/<file> (val files live under train)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from mdpl.data.writers.common import Entry, WriterSpec, found, load_json_object, require_str, split_ids

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


def _class_idx(path: Path) -> dict[str, int]:
    class_idx = load_json_object(path)
    for cls, index in class_idx.items():
        if type(index) is not int:  # bool is not an index
            raise ValueError(f'{path}: class "{cls}" must map to an integer index, got {found(index)}')
    return class_idx


def list_entries(raw: Path, split: str) -> tuple[list[Entry], list[str]]:
    class_idx = _class_idx(raw / "class_idx.json")
    text_json = raw / "text.json"
    texts = load_json_object(text_json)
    split_json = raw / "split.json"
    folder = raw / "images" / ("test" if split == "test" else "train")
    entries, skipped = [], []
    for n, sample in enumerate(split_ids(split_json, split)):
        if sample not in texts:  # officially skipped: the sample has no text
            skipped.append(sample)
            continue
        cls = class_of(sample) if "_" in sample else ""
        if cls not in class_idx:
            raise ValueError(
                f'{split_json}: split "{split}" item {n} "{sample}": file name must be <class>_<number>.<ext> '
                f"with <class> a key of {raw / 'class_idx.json'} (got class {cls!r})"
            )
        title = require_str(texts[sample], f'{text_json}: sample "{sample}": title')
        columns = {"text": [title], "label": class_idx[cls], "image_id": sample, "split": split}
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
