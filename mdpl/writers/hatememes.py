"""Hateful Memes: data/{train,dev,test}.jsonl lines {"img": "img/x.png", "text", "label"}, images at data/<img>.

The official writer reads data/test.jsonl as the test split: it must be the labelled test_seen.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from mdpl.writers.common import Entry, WriterSpec

SCHEMA = pa.schema(
    [("image", pa.binary()), ("text", pa.list_(pa.string())), ("label", pa.int64()), ("split", pa.string())]
)


def list_entries(raw: Path, split: str) -> tuple[list[Entry], list[str]]:
    path = raw / "data" / f"{split}.jsonl"
    hint = " (the test split must be the labelled test_seen.jsonl)" if split == "test" else ""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}{hint}")
    entries = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
            missing = [k for k in ("img", "text", "label") if k not in item]
            if missing:
                raise KeyError(f"{path}:{n}: missing {missing}{hint}")
            columns = {"text": [item["text"]], "label": item["label"], "split": split}
            entries.append(Entry(item["img"], raw / "data" / item["img"], columns))
    return entries, []


SPEC = WriterSpec(
    name="hateful_memes",
    raw_subdir="Hatememes",
    default_out="./datasets/Hatefull_Memes",
    splits={"train": "hatememes_train", "dev": "hatememes_dev", "test": "hatememes_test"},
    schema=SCHEMA,
    list_entries=list_entries,
)
