"""Missing modalities: the per-row missing tables, and the one substitution that makes a sample miss a modality.

Codes: 0 complete, 1 text missing, 2 image missing.

Tables. Official file {missing_table_root}/{arrow_name}_missing_{type}_{r}.pt, r = str(ratio) without "."
(0.7 -> "07", 1 -> "1", 1.0 -> "10"): a 1-D float32 tensor with one code per Arrow row, loaded when present.
Drawn, int(n * ratio) rows are sampled without replacement; "text" marks them 1, "image" 2, "both" marks them
1 and then a both_ratio share of them 2. Ratio 0 is all zeros and never saved. Draws (config table_draw):
- "official": the stream of Python's `random` seeded with the run seed, drawing the tables of each dataset in
  train, val, test order and skipping a table that is loaded from its file (so an existing file changes later
  draws, as officially); a private random.Random(seed) gives exactly the numbers of the seeded global one.
- "seeded": a private random.Random(f"{seed}/{file stem}") per file, whatever exists; the file name gets a
  "_seed{seed}" suffix so that it never shadows an official table.

Substitution (`apply_missing`). A missing text is the empty string: its token ids and mask are those of ""
(BERT: [CLS] [SEP] and padding; CLIP: start, end of text and padding). A missing image is all ones after
normalisation in the shape its transform gives (`normalize_images` writes them on the device); the loader does
not decode it when the transforms are deterministic. The training loader and the sweep use this one function.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import Tensor

from mdpl.errors import DataError
from mdpl.files import atomic_path, locked_folder

COMPLETE, TEXT_MISSING, IMAGE_MISSING = 0, 1, 2


def table_path(
    root: str | Path, arrow_name: str, missing_type: str, ratio: float, draw: str = "official", seed: int = 0
) -> Path:
    stem = f"{arrow_name}_missing_{missing_type}_{str(ratio).replace('.', '')}"
    return Path(root) / f"{stem}{f'_seed{seed}' if draw == 'seeded' else ''}.pt"


def draw_table(n: int, ratio: float, missing_type: str, both_ratio: float, rng=random) -> Tensor:
    """The official draw (see the module docstring); `rng` is the `random` module or a random.Random."""
    table = torch.zeros(n)
    if ratio > 0:
        index = rng.sample(range(n), int(n * ratio))
        if missing_type == "text":
            table[index] = TEXT_MISSING
        elif missing_type == "image":
            table[index] = IMAGE_MISSING
        else:
            table[index] = TEXT_MISSING
            table[rng.sample(index, int(len(index) * both_ratio))] = IMAGE_MISSING
    return table


CODE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
               torch.int8, torch.uint8)  # fmt: skip


def _load(path: Path, n: int) -> Tensor:
    """A saved table, checked: a 1-D tensor of codes 0/1/2 with one code per Arrow row."""
    redraw = "delete it to redraw it (or point missing_table_root elsewhere)"
    expected = "expected a 1-D tensor of codes 0/1/2 saved with torch.save"
    try:
        table = torch.load(path, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects weights_only refuses
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        what = f"{type(e).__name__}: {detail}"
        raise DataError(f"missing table {path} cannot be read ({what}); {expected}; {redraw}") from None
    if not isinstance(table, Tensor):
        raise DataError(f"missing table {path} holds a {type(table).__name__}, {expected}; {redraw}")
    if table.dim() != 1 or table.dtype not in CODE_DTYPES:
        raise DataError(f"missing table {path} holds a {table.dtype} tensor of shape {tuple(table.shape)}, "
                        f"{expected}; {redraw}")  # fmt: skip
    bad = torch.nonzero((table != 0) & (table != 1) & (table != 2)).flatten()  # NaN is bad too
    if len(bad):
        row = int(bad[0])
        raise DataError(f"missing table {path} holds codes outside {{0, 1, 2}} ({table[row].item()!r} at row "
                        f"{row}, {len(bad)} rows in all); {redraw}")  # fmt: skip
    if len(table) != n:
        raise DataError(
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
    rng: random.Random | None = None,
) -> Tensor:
    """The table for `arrow_name` (n rows): loaded if its file exists, else drawn and saved atomically.

    `rng` draws an official table (default: the global `random`); a "seeded" table has its own generator.
    Creation holds an exclusive flock on missing_table_root, so concurrent processes (DDP ranks) end up reading
    one identical table: the first writes it, the others find it when they get the lock."""
    path = table_path(root, arrow_name, missing_type, ratio, draw, seed)
    if ratio == 0:
        return torch.zeros(n)
    if path.exists():
        return _load(path, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked_folder(path.parent):
        if path.exists():  # another process made it while we waited
            return _load(path, n)
        if draw == "seeded":
            rng = random.Random(f"{seed}/{path.stem}")
        table = draw_table(n, ratio, missing_type, both_ratio, random if rng is None else rng)
        with atomic_path(path) as tmp:
            torch.save(table, tmp)
        return table


def split_tables(specs: list[tuple[str, str, int, float, str]], root: str | Path, both_ratio: float, draw: str,
                 seed: int) -> list[Tensor]:  # fmt: skip
    """The tables of a run, in the official order: `specs` lists (split, arrow name, rows, ratio, type) for
    every dataset's train, val and test split, in that order; official draws share one stream seeded by `seed`."""
    stream = random.Random(seed)
    return [load_or_create(root, name, n, ratio, kind, both_ratio, draw, seed, stream)
            for _, name, n, ratio, kind in specs]  # fmt: skip


def apply_missing(batch: dict, codes: Tensor) -> dict:
    """The batch as its samples are with missing codes `codes` (B, on the batch's device): the token ids and mask
    of "" for a missing text; "missing_type" = codes, from which normalize_images writes a missing image's
    placeholder. `batch` holds the complete inputs and "empty_ids" / "empty_masks" (1 x L, the tokens of "")."""
    silent = (codes == TEXT_MISSING)[:, None]
    out = dict(batch, missing_type=codes)
    out["text_ids"] = torch.where(silent, batch["empty_ids"], batch["text_ids"])
    out["text_masks"] = torch.where(silent, batch["empty_masks"], batch["text_masks"])
    return out
