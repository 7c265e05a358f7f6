"""One dataset class for the three tasks: a memory-mapped Arrow file plus its missing-modality tables."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import Dataset

from mdpl.data.missing import COMPLETE, IMAGE_MISSING, TEXT_MISSING
from mdpl.data.writers.common import PENDING, BadImageError, read_pending
from mdpl.errors import DataError, MissingFileError

Image.MAX_IMAGE_PIXELS = None  # as officially


SOURCE_KEY = b"mdpl.source"  # schema metadata key read_arrow sets to the file's path (for error messages)


def read_arrow(path: str | Path, make_hint: str = "") -> pa.Table:
    """The whole arrow IPC file, memory-mapped (image bytes are paged in on access).

    A missing, truncated or non-Arrow file, or one whose make_arrow conversion was interrupted while its
    split files were being renamed into place, is an error naming the file. The table's schema metadata
    records the path (SOURCE_KEY), so an ArrowDataset built on it can name the file in its own errors.
    """
    hint = f"; create it with: {make_hint}" if make_hint else ""
    if not Path(path).is_file():
        raise MissingFileError(f"arrow file not found: {path}{hint}")
    plan = read_pending(Path(path).parent)
    if plan is not None and Path(path).name in {final for _, final in plan["replace"]}:
        raise DataError(
            f"{path}: its make_arrow conversion was interrupted while the split files were being replaced "
            f"({Path(path).parent / PENDING} remains); re-run make_arrow to complete it{hint}"
        )
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        table.validate(full=True)  # offsets and lengths (image bytes are not read)
    except (pa.ArrowException, OSError) as e:
        detail = " ".join(str(e).splitlines())
        again = f": {make_hint}" if make_hint else ""
        raise DataError(
            f"{path}: not a readable Arrow IPC file ({type(e).__name__}: {detail}); is it truncated? "
            f"Re-run make_arrow to write it again{again}"
        ) from None
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SOURCE_KEY: str(path).encode()})


class ArrowDataset(Dataset):
    """Items {"image": [uint8 view per transform], "text": str, "label": tensor, "codes": tuple of ints}.

    Index j runs row-major over (row, text) pairs: one sample per text of a row (MM-IMDb: one per plot, all
    sharing the row's image, label and missing codes); one_text keeps only each row's first text. `tables` holds
    one or more missing tables (T x rows: training has one; the sweep one per grid point), and "codes" the row's
    code in each. Texts and images are the complete ones: `mdpl.data.missing.apply_missing` substitutes what a
    code removes. An image missing in every table is not decoded when the transforms are deterministic: its views
    are zeros of the transformed shape (read from the image header), to be replaced by the placeholder anyway.
    simulate_missing (training, one table): a complete row gets a random code from {0, 1, 2} at each access.
    """

    def __init__(
        self,
        table: pa.Table,
        text_column: str,
        transforms: list,
        tables: Sequence[torch.Tensor] | torch.Tensor,
        simulate_missing: bool = False,
        one_text: bool = False,
        multilabel: bool = False,
        source: str = "",
    ) -> None:
        # The arrow file, named in errors: `source`, else the path read_arrow recorded, else a placeholder.
        recorded = (table.schema.metadata or {}).get(SOURCE_KEY, b"").decode()
        self.source = str(source) or recorded or "<arrow table>"
        absent = [c for c in ("image", text_column, "label") if c not in table.column_names]
        if absent:
            raise DataError(f"{self.source}: no column {absent} (found {table.column_names}); re-run make_arrow")
        tables = torch.stack([torch.as_tensor(t) for t in tables]) if len(tables) else torch.zeros(0, table.num_rows)
        if tables.shape[1] != table.num_rows:
            raise DataError(
                f"{self.source}: missing table has {tables.shape[1]} rows, the arrow table {table.num_rows}"
            )
        self.images = table.column("image")  # stays memory-mapped
        self.texts: list[list[str]] = table.column(text_column).to_pylist()
        labels = table.column("label").to_pylist()
        self.labels = torch.tensor(labels, dtype=torch.float32 if multilabel else torch.long)
        self.codes = [tuple(row) for row in tables.long().T.tolist()]  # per row; plain ints, cheap to share
        self.transforms = transforms
        self.simulate_missing = simulate_missing
        self.decode_missing = any(t.random for t in transforms)  # random transforms still draw their numbers
        self.index = [
            (i, k) for i, texts in enumerate(self.texts) for k in range(min(len(texts), 1) if one_text else len(texts))
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> dict:
        row, k = self.index[j]
        codes = self.codes[row]
        if self.simulate_missing and codes == (COMPLETE,):  # official: kept-complete training rows get a random fate
            codes = (random.choice([COMPLETE, TEXT_MISSING, IMAGE_MISSING]),)
        return {
            "image": self.image_views(row, missing=bool(codes) and all(c == IMAGE_MISSING for c in codes)),
            "text": self.texts[row][k],
            "label": self.labels[row],
            "codes": codes,
        }

    def missing_share(self, table: int) -> float:
        """Share of the samples whose code in `table` is not 0 (MM-IMDb: rows are movies, samples plots)."""
        return sum(self.codes[row][table] != COMPLETE for row, _ in self.index) / max(len(self.index), 1)

    def image_views(self, row: int, missing: bool) -> list[torch.Tensor]:
        """The row's image through every transform; a missing one, when the transforms draw no random numbers,
        as zeros of the transformed shape without decoding (the header gives the size)."""
        try:
            img = Image.open(io.BytesIO(self.images[row].as_py()))
            if not missing or self.decode_missing:
                img.load()  # decodes the whole image
                if img.mode != "RGB":  # (convert to the same mode would be a plain copy)
                    img = img.convert("RGB")
        except Exception as e:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError...)
            raise BadImageError(
                f"{self.source}: row {row}: image bytes cannot be decoded ({type(e).__name__}: {e}); "
                "re-run make_arrow, which checks every image"
            ) from e
        if missing and not self.decode_missing:
            # zeros in the decoded views' H x W x 3 layout, without memory of their own (the collate copies them)
            blank = torch.zeros((1, 1, 1), dtype=torch.uint8)
            return [blank.expand(*t.output_hw(*img.size), 3).permute(2, 0, 1) for t in self.transforms]
        return [t(img) for t in self.transforms]
