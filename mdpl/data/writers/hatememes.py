"""Hateful Memes: data/{train,dev,test}.jsonl lines {"img": "img/x.png", "text", "label"}, images at data/<img>.

The official writer reads data/test.jsonl as the test split: it must be the labelled test_seen.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from mdpl.data.writers.common import Entry, WriterSpec, found, read_text, require_str

SCHEMA = pa.schema(
    [("image", pa.binary()), ("text", pa.list_(pa.string())), ("label", pa.int64()), ("split", pa.string())]
)


def list_entries(raw: Path, split: str) -> tuple[list[Entry], list[str]]:
    path = raw / "data" / f"{split}.jsonl"
    hint = " (the test split must be the labelled test_seen.jsonl)" if split == "test" else ""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}{hint}")
    entries = []
    for n, line in enumerate(read_text(path).split("\n"), 1):  # not splitlines: JSON text may hold U+2028
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{path}:{n}: must be a JSON object ({{...}}), got {found(item)}")
        missing = [k for k in ("img", "text", "label") if k not in item]
        if missing:
            raise KeyError(f"{path}:{n}: missing {missing}{hint}")
        img = require_str(item["img"], f'{path}:{n}: field "img"')
        text = require_str(item["text"], f'{path}:{n}: field "text"')
        label = item["label"]
        if type(label) is not int or label not in (0, 1):  # bool is not an int here
            got = f"int {label}" if type(label) is int else found(label)
            raise ValueError(f'{path}:{n}: field "label" must be the integer 0 or 1, got {got}')
        columns = {"text": [text], "label": label, "split": split}
        entries.append(Entry(img, raw / "data" / img, columns))
    return entries, []


SPEC = WriterSpec(
    name="hateful_memes",
    raw_subdir="Hatememes",
    default_out="./datasets/Hatefull_Memes",
    splits={"train": "hatememes_train", "dev": "hatememes_dev", "test": "hatememes_test"},
    schema=SCHEMA,
    list_entries=list_entries,
)
