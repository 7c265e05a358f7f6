"""MM-IMDb: split.json (train/dev/test id lists), images/<id>.jpeg, labels/<id>.json ("plot", "genres")."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from mdpl.data.writers.common import Entry, WriterSpec, load_json_object, require_str_list, split_ids

# Label index order of the official writer (indices 0..22).
GENRES = [
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary",
    "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation",
    "Musical", "Western", "Sport", "Short", "Film-Noir",
]  # fmt: skip

SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("plots", pa.list_(pa.string())),
        ("label", pa.list_(pa.int64())),
        ("genres", pa.list_(pa.string())),
        ("image_id", pa.string()),
        ("split", pa.string()),
    ]
)


def list_entries(raw: Path, split: str) -> tuple[list[Entry], list[str]]:
    entries = []
    for sample in split_ids(raw / "split.json", split):
        path = raw / "labels" / f"{sample}.json"
        info = load_json_object(path)
        for key in ("plot", "genres"):
            if key not in info:
                raise KeyError(f"{path}: no {key!r} key")
        plots = require_str_list(info["plot"], f'{path}: field "plot"')
        genres = require_str_list(info["genres"], f'{path}: field "genres"')
        columns = {
            "plots": plots,
            "label": [1 if g in genres else 0 for g in GENRES],
            "genres": genres,
            "image_id": sample,
            "split": split,
        }
        entries.append(Entry(sample, raw / "images" / f"{sample}.jpeg", columns))
    return entries, []


SPEC = WriterSpec(
    name="mmimdb",
    raw_subdir="mmimdb",
    default_out="./datasets/mmimdb",
    splits={"train": "mmimdb_train", "dev": "mmimdb_dev", "test": "mmimdb_test"},
    schema=SCHEMA,
    list_entries=list_entries,
)
