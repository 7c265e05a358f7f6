"""The one conversion mechanism: raw entries -> validated image bytes -> an Arrow IPC file, atomically.

Each dataset module (mmimdb, food101, hatememes) only says how to list a split's entries; reading the image
bytes, checking they decode, batching rows and the temporary-name-then-rename write live here.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from PIL import Image
from tqdm import tqdm

Image.MAX_IMAGE_PIXELS = None  # as officially: large images are data, not decompression bombs

ROWS_PER_BATCH = 512  # record batch size: bounds memory (the official writer held a whole split in pandas)


@dataclass(frozen=True)
class Entry:
    """One raw sample: its id (reported when its image is bad), its image file and the other columns."""

    sample_id: str
    image_path: Path
    columns: dict


@dataclass(frozen=True)
class WriterSpec:
    """How one dataset is laid out: subfolders, output files and how to list a split's entries."""

    name: str  # make_arrow --dataset value
    raw_subdir: str  # the dataset folder under --root
    default_out: str  # the official output folder
    splits: dict[str, str]  # raw split key -> arrow file stem, in train, val, test order
    schema: pa.Schema  # column order and types of the arrow file; "image" first
    list_entries: Callable[[Path, str], tuple[list[Entry], list[str]]]  # -> (entries, ids skipped officially)
    skip_reason: str = ""  # why list_entries may skip ids (reported with their count)


@dataclass
class SplitReport:
    arrow_path: Path
    rows: int
    skipped_official: list[str] = field(default_factory=list)  # e.g. Food-101 files absent from text.json
    skipped_bad: list[str] = field(default_factory=list)  # undecodable images dropped by --skip-bad


class BadImageError(ValueError):
    """Image bytes that PIL cannot decode; the message names the file."""


def check_image(data: bytes, path: Path) -> None:
    """Decode the bytes fully (open + load), so truncated or non-image files fail now, not mid-training."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError...)
        raise BadImageError(f"{path}: unreadable image bytes ({type(e).__name__}: {e})") from e


def read_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path.read_bytes()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to: renamed to `path` on success, removed on any failure, so
    `path` is never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_arrow_atomic(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> None:
    """An Arrow IPC file of `batches`, written atomically."""
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


def _record_batches(
    spec: WriterSpec, entries: list[Entry], skip_bad: bool, skipped: list[str], desc: str
) -> Iterator[pa.RecordBatch]:
    rows: list[dict] = []
    for entry in tqdm(entries, desc=desc, unit="img"):
        data = read_file(entry.image_path, "image")
        try:
            check_image(data, entry.image_path)
        except BadImageError as e:
            if not skip_bad:
                raise
            tqdm.write(f"skipping {entry.sample_id}: {e}")
            skipped.append(entry.sample_id)
            continue
        rows.append({"image": data, **entry.columns})
        if len(rows) == ROWS_PER_BATCH:
            yield pa.RecordBatch.from_pylist(rows, schema=spec.schema)
            rows = []
    if rows or not entries:
        yield pa.RecordBatch.from_pylist(rows, schema=spec.schema)


def convert(
    spec: WriterSpec, root: str | Path, out: str | Path | None = None, skip_bad: bool = False
) -> list[SplitReport]:
    """Convert `root/<raw_subdir>` into one arrow file per split under `out` (default: the official folder)."""
    raw = Path(root) / spec.raw_subdir
    if not raw.is_dir():
        raise FileNotFoundError(f"{spec.name}: raw dataset folder not found: {raw} (--root is its parent)")
    out_dir = Path(out if out is not None else spec.default_out)
    reports = []
    for split, stem in spec.splits.items():
        entries, skipped_official = spec.list_entries(raw, split)
        skipped_bad: list[str] = []
        path = out_dir / f"{stem}.arrow"
        batches = _record_batches(spec, entries, skip_bad, skipped_bad, desc=stem)
        write_arrow_atomic(path, spec.schema, batches)
        report = SplitReport(path, len(entries) - len(skipped_bad), skipped_official, skipped_bad)
        if skipped_official:
            tqdm.write(
                f"{stem}: skipped {len(skipped_official)} samples {spec.skip_reason} "
                f"(first: {', '.join(skipped_official[:5])})"
            )
        if skipped_bad:
            listing = out_dir / f"{stem}_skipped.txt"
            with atomic_path(listing) as tmp:
                tmp.write_text("".join(f"{i}\n" for i in skipped_bad))
            tqdm.write(f"{stem}: skipped {len(skipped_bad)} unreadable images; ids listed in {listing}")
        tqdm.write(f"{stem}: wrote {report.rows} rows to {path}")
        reports.append(report)
    return reports


def load_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:  # e.g. the truncated Food-101 split.json of the MDPL archive
            raise ValueError(f"{path}: not valid JSON ({e}); is the file truncated?") from None


def split_ids(split_json: Path, split: str) -> list[str]:
    """The id list of one split in a split.json, with a clear error if the key is missing."""
    splits = load_json(split_json)
    if split not in splits:
        raise KeyError(f"{split_json}: no split {split!r} (found keys {sorted(splits)})")
    return splits[split]
