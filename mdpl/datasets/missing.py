"""Missing-modality tables: one float code per arrow row (0 complete, 1 text missing, 2 image missing).

Official file: {missing_table_root}/{arrow_name}_missing_{type}_{r}.pt, r = str(ratio) without ".",
(0.7 -> "07", 1 -> "1", 1.0 -> "10"), a 1-D float32 tensor saved with torch.save; loaded when present.

Draws (config table_draw):
- "official": Python's global `random` (seeded by pl.seed_everything), so the same seed and build order
  (train, val, test) give the official tables.
- "seeded": a private random.Random(f"{seed}/{file stem}"), independent of global RNG state; the file name
  gets a "_seed{seed}" suffix so it never shadows an official table.
Ratio 0 is all zeros and never saved (as officially; nothing to reproduce).
"""

from __future__ import annotations

import fcntl
import numbers
import os
import random
from pathlib import Path

import torch

from mdpl.writers.common import atomic_path

CODES = {"complete": 0, "text": 1, "image": 2}
TYPES = ("text", "image", "both")


def table_path(
    root: str | Path, arrow_name: str, missing_type: str, ratio: float, draw: str = "official", seed: int = 0
) -> Path:
    stem = f"{arrow_name}_missing_{missing_type}_{str(ratio).replace('.', '')}"
    if draw == "seeded":
        stem += f"_seed{seed}"
    elif draw != "official":
        raise ValueError(f"table_draw must be 'official' or 'seeded', got {draw!r}")
    return Path(root) / f"{stem}.pt"


def _ratio_ok(value) -> bool:
    """A real number (not bool, not a numeric string) in [0, 1] (NaN is not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1


def _check(ratio: float, missing_type: str, both_ratio: float = 0.0) -> None:
    if missing_type not in TYPES:
        raise ValueError(f"missing_type must be one of {TYPES}, got {missing_type!r}")
    if not _ratio_ok(ratio):
        raise ValueError(f"missing ratio must be a number in [0, 1], got {_show(ratio)}")
    if not _ratio_ok(both_ratio):
        raise ValueError(f"both_ratio must be a number in [0, 1], got both_ratio={_show(both_ratio)}")


def _show(value) -> str:
    """repr, plus the type when it is not a plain number (so "0.7" reads as a string)."""
    plain = isinstance(value, (int, float)) and not isinstance(value, bool)
    return repr(value) if plain else f"{value!r} ({type(value).__name__})"


def draw_table(n: int, ratio: float, missing_type: str, both_ratio: float, rng=random) -> torch.Tensor:
    """The official draw: int(n * ratio) rows sampled without replacement; for "both", a both_ratio share of
    them loses the image (code 2) and the rest the text (code 1). `rng` is the `random` module or a Random."""
    _check(ratio, missing_type, both_ratio)
    table = torch.zeros(n)
    if ratio > 0:
        index = rng.sample(range(n), int(n * ratio))
        if missing_type == "text":
            table[index] = 1
        elif missing_type == "image":
            table[index] = 2
        else:
            table[index] = 1
            table[rng.sample(index, int(len(index) * both_ratio))] = 2
    return table


CODE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
               torch.int8, torch.uint8)  # fmt: skip


def _load(path: Path, n: int) -> torch.Tensor:
    """A saved table, checked: a 1-D tensor of codes 0/1/2 with one code per arrow row."""
    redraw = "delete it to redraw it (or point missing_table_root elsewhere)"
    try:
        table = torch.load(path, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects weights_only refuses
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"missing table {path} cannot be read ({type(e).__name__}: {detail}); expected a 1-D tensor of codes "
            f"0/1/2 saved with torch.save; {redraw}"
        ) from None
    if not isinstance(table, torch.Tensor):
        raise ValueError(f"missing table {path} holds a {type(table).__name__}, expected a 1-D tensor of codes "
                         f"0/1/2; {redraw}")  # fmt: skip
    if table.dim() != 1 or table.dtype not in CODE_DTYPES:
        raise ValueError(f"missing table {path} holds a {table.dtype} tensor of shape {tuple(table.shape)}, "
                         f"expected a 1-D tensor of codes 0/1/2; {redraw}")  # fmt: skip
    bad = torch.nonzero((table != 0) & (table != 1) & (table != 2)).flatten()  # NaN is bad too
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"missing table {path} holds codes outside {{0, 1, 2}} ({table[row].item()!r} at row "
                         f"{row}, {len(bad)} rows in all); {redraw}")  # fmt: skip
    if len(table) != n:
        raise ValueError(
            f"missing table {path} has {len(table)} rows but its arrow file has {n}; "
            "delete the table (it was made for other data) or point missing_table_root elsewhere"
        )
    return table


def load_or_create(
    root: str | Path,
    arrow_name: str,
    n: int,
    ratio: float,
    missing_type: str,
    both_ratio: float,
    draw: str = "official",
    seed: int = 0,
) -> torch.Tensor:
    """The table for `arrow_name` (n rows): loaded if its file exists, else drawn and saved atomically.

    Creation holds an exclusive flock on missing_table_root, so concurrent processes (DDP ranks) end up
    reading one identical table: the first writes it, the others find it when they get the lock.
    """
    _check(ratio, missing_type, both_ratio)
    path = table_path(root, arrow_name, missing_type, ratio, draw, seed)
    if ratio == 0:
        return torch.zeros(n)
    if path.exists():
        return _load(path, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if path.exists():  # another process made it while we waited
            return _load(path, n)
        rng = random if draw == "official" else random.Random(f"{seed}/{path.stem}")
        table = draw_table(n, ratio, missing_type, both_ratio, rng)
        with atomic_path(path) as tmp:
            torch.save(table, tmp)
        return table
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
