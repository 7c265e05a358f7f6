"""The one conversion mechanism: raw entries -> validated image bytes -> Arrow IPC files, all or nothing.

Each dataset module (mmimdb, food101, hatememes) only says how to list a split's entries (checking the types
of what it reads); reading the image bytes, checking they decode, batching rows and the all-or-nothing write
of a dataset's split files live here.

All or nothing: every split is first written to a temporary sibling `.{name}.{pid}.tmp`, then a journal
(`.make_arrow.pending`, the list of renames) is written atomically and the renames are done. A run killed
before the journal exists leaves the old files untouched (plus stale temporary files, removed by the next
run); a run killed during the renames leaves the journal, which the next run completes first and which
read_arrow refuses to read past, so nobody reads new train with old val/test.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from mdpl.errors import DataError
from mdpl.files import atomic_path, fsync_path, locked_folder, temp_path

Image.MAX_IMAGE_PIXELS = None  # as officially: large images are data, not decompression bombs

ROWS_PER_BATCH = 512  # record batch size: bounds memory (the official writer held a whole split in pandas)
PENDING = ".make_arrow.pending"  # journal of a conversion's renames, present only while they are being done


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


class BadImageError(DataError):
    """Image bytes that PIL cannot decode; the message names the file."""


# ---------------------------------------------------------------- reading and checking raw files


def found(value) -> str:
    """The JSON type name of a value of the wrong type, for error messages."""
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _utf8(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a JSON "\ud800" escape: valid JSON, not encodable text
        raise ValueError(f"{where} is not valid UTF-8 text (unpaired surrogate at character {e.start})") from None
    return text


def require_str(value, where: str) -> str:
    """`value` if it is a string; else ValueError '<where> must be a string, got <type>'."""
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {found(value)}")
    return _utf8(value, where)


def require_str_list(value, where: str) -> list[str]:
    """`value` if it is a list of strings; else ValueError '<where> must be a list of strings, got ...'."""
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of strings, got {found(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"{where} must be a list of strings, got {found(item)} at index {i}")
        _utf8(item, f"{where} (index {i})")
    return value


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a BOM is dropped); not UTF-8 -> ValueError naming the file, line and byte."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}:{line}: not valid UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


def load_json(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:  # e.g. the truncated Food-101 split.json of the MDPL archive
        raise ValueError(f"{path}: not valid JSON ({e}); is the file truncated?") from None


def load_json_object(path: Path) -> dict:
    """A JSON file that must hold an object ({...})."""
    obj = load_json(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: must hold a JSON object ({{...}}), got {found(obj)}")
    return obj


def split_ids(split_json: Path, split: str) -> list[str]:
    """The id list of one split in a split.json, with a clear error if the key is missing or not a list."""
    splits = load_json_object(split_json)
    if split not in splits:
        raise KeyError(f"{split_json}: no split {split!r} (found keys {sorted(splits)})")
    return require_str_list(splits[split], f'{split_json}: split "{split}"')


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


# ---------------------------------------------------------------- atomic files


def write_arrow(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> None:
    """An Arrow IPC file of `batches` at `path` (a temporary name: the caller renames it)."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)


# ---------------------------------------------------------------- all-or-nothing commit of a split set


def read_pending(folder: Path) -> dict | None:
    """The journal of an unfinished conversion in `folder` ({"replace": [[tmp, final]], "remove": [name]}),
    or None when there is none."""
    journal = folder / PENDING
    if not journal.exists():
        return None
    try:
        plan = json.loads(journal.read_text(encoding="utf-8"))
        assert isinstance(plan, dict) and isinstance(plan["replace"], list) and isinstance(plan["remove"], list)
        return plan
    except Exception:  # it is written atomically, so this means someone edited it
        raise ValueError(
            f"{journal}: unreadable journal of an interrupted make_arrow run; delete it and the arrow files "
            "beside it, then re-run make_arrow"
        ) from None


def _apply(folder: Path, plan: dict) -> None:
    for tmp_name, final_name in plan["replace"]:
        if (folder / tmp_name).exists():  # absent: already renamed before the interruption
            os.replace(folder / tmp_name, folder / final_name)
    for name in plan["remove"]:
        (folder / name).unlink(missing_ok=True)
    fsync_path(folder)
    (folder / PENDING).unlink()
    fsync_path(folder)


def _commit(folder: Path, renames: list[tuple[Path, Path]], removals: list[Path]) -> None:
    """Rename every temporary file into place as one set: journal first, so an interruption is completed by
    the next run (and refused by read_arrow meanwhile)."""
    for tmp, _ in renames:
        fsync_path(tmp)
    plan = {"replace": [[t.name, f.name] for t, f in renames], "remove": [r.name for r in removals]}
    with atomic_path(folder / PENDING) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(plan, f)
            f.flush()
            os.fsync(f.fileno())
    fsync_path(folder)
    _apply(folder, plan)


def _tidy(folder: Path, spec: WriterSpec) -> None:
    """Under the folder lock: complete an interrupted commit, then remove the stale temporary files that
    killed runs left for this dataset's files (nobody else writes them while we hold the lock)."""
    plan = read_pending(folder)
    if plan is not None:
        tqdm.write(f"{folder}: completing the interrupted conversion recorded in {PENDING}")
        _apply(folder, plan)
    names = [PENDING] + [n for stem in spec.splits.values() for n in (f"{stem}.arrow", f"{stem}_skipped.txt")]
    for name in names:
        for stale in folder.glob(f".{name}.*.tmp"):
            tqdm.write(f"removing {stale}, left by an interrupted run")
            stale.unlink(missing_ok=True)


# ---------------------------------------------------------------- conversion


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


def _list_all(spec: WriterSpec, raw: Path) -> dict[str, tuple[list[Entry], list[str]]]:
    """Every split's entries, type-checked, and every image file present: all before anything is written."""
    listings = {}
    for split in spec.splits:
        entries, skipped = spec.list_entries(raw, split)
        for entry in entries:
            if not entry.image_path.is_file():
                raise FileNotFoundError(f"image not found: {entry.image_path} (sample {entry.sample_id!r})")
        listings[split] = (entries, skipped)
    return listings


def convert(
    spec: WriterSpec, root: str | Path, out: str | Path | None = None, skip_bad: bool = False
) -> list[SplitReport]:
    """Convert `root/<raw_subdir>` into one arrow file per split under `out` (default: the official folder).

    All splits are replaced together or none is (see the module docstring); a bad input raises before
    anything is written, or (a bad image) while writing temporary files, which are then removed.
    """
    raw = Path(root) / spec.raw_subdir
    if not raw.is_dir():
        raise FileNotFoundError(f"{spec.name}: raw dataset folder not found: {raw} (--root is its parent)")
    out_dir = Path(out if out is not None else spec.default_out)
    if out_dir.is_dir():  # an earlier run's interrupted commit is completed even if this run's input is bad
        with locked_folder(out_dir):
            _tidy(out_dir, spec)
    listings = _list_all(spec, raw)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports: list[SplitReport] = []
    renames: list[tuple[Path, Path]] = []
    removals: list[Path] = []
    with locked_folder(out_dir):
        _tidy(out_dir, spec)
        try:
            for split, stem in spec.splits.items():
                entries, skipped_official = listings[split]
                skipped_bad: list[str] = []
                path = out_dir / f"{stem}.arrow"
                renames.append((temp_path(path), path))
                batches = _record_batches(spec, entries, skip_bad, skipped_bad, desc=stem)
                write_arrow(temp_path(path), spec.schema, batches)
                listing = out_dir / f"{stem}_skipped.txt"
                if skipped_bad:
                    renames.append((temp_path(listing), listing))
                    temp_path(listing).write_text("".join(f"{i}\n" for i in skipped_bad), encoding="utf-8")
                elif listing.exists():  # from an earlier run: no longer true of the new file
                    removals.append(listing)
                reports.append(SplitReport(path, len(entries) - len(skipped_bad), skipped_official, skipped_bad))
            _commit(out_dir, renames, removals)
        finally:
            if not (out_dir / PENDING).exists():  # else a failed commit: its journal still needs them
                for tmp, _ in renames:  # after a failure (after success they were all renamed)
                    tmp.unlink(missing_ok=True)
    for report in reports:
        stem = report.arrow_path.stem
        if report.skipped_official:
            tqdm.write(
                f"{stem}: skipped {len(report.skipped_official)} samples {spec.skip_reason} "
                f"(first: {', '.join(report.skipped_official[:5])})"
            )
        if report.skipped_bad:
            tqdm.write(
                f"{stem}: skipped {len(report.skipped_bad)} unreadable images; "
                f"ids listed in {out_dir / f'{stem}_skipped.txt'}"
            )
        tqdm.write(f"{stem}: wrote {report.rows} rows to {report.arrow_path}")
    return reports
