"""One dataset class for the three tasks: a memory-mapped arrow file plus a missing-modality table."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import Dataset

from mdpl.transforms import MISSING_PIXEL, PixelBert
from mdpl.writers.common import PENDING, BadImageError, read_pending

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
        raise FileNotFoundError(f"arrow file not found: {path}{hint}")
    plan = read_pending(Path(path).parent)
    if plan is not None and Path(path).name in {final for _, final in plan["replace"]}:
        raise ValueError(
            f"{path}: its make_arrow conversion was interrupted while the split files were being replaced "
            f"({Path(path).parent / PENDING} remains); re-run make_arrow to complete it{hint}"
        )
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        table.validate(full=True)  # offsets and lengths (image bytes are not read)
    except (pa.ArrowException, OSError) as e:
        detail = " ".join(str(e).splitlines())
        again = f": {make_hint}" if make_hint else ""
        raise ValueError(
            f"{path}: not a readable Arrow IPC file ({type(e).__name__}: {detail}); is it truncated? "
            f"Re-run make_arrow to write it again{again}"
        ) from None
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SOURCE_KEY: str(path).encode()})


class ArrowDataset(Dataset):
    """Items {"image": [tensor per transform], "text": str, "label": tensor, "missing_type": int}.

    Index j runs row-major over (row, text) pairs: one sample per text of a row (MM-IMDb: one per plot,
    all sharing the row's image, label and missing code); one_text keeps only each row's first text.
    A missing text becomes ""; a missing image becomes views of MISSING_PIXEL (all ones after normalisation)
    in the transformed shapes.
    """

    def __init__(
        self,
        table: pa.Table,
        text_column: str,
        transforms: list[PixelBert],
        missing: torch.Tensor,
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
            raise ValueError(f"{self.source}: no column {absent} (found {table.column_names}); re-run make_arrow")
        if len(missing) != table.num_rows:
            raise ValueError(f"{self.source}: missing table has {len(missing)} rows, the arrow table {table.num_rows}")
        self.images = table.column("image")  # stays memory-mapped
        self.texts: list[list[str]] = table.column(text_column).to_pylist()
        labels = table.column("label").to_pylist()
        self.labels = torch.tensor(labels, dtype=torch.float32 if multilabel else torch.long)
        self.missing = missing.long().tolist()  # plain ints: cheap per item, safe to share with workers
        self.transforms = transforms
        self.simulate_missing = simulate_missing
        # Missing images need no decode when every transform is deterministic: the ones' shape is known
        # from the image header (identical output; randomised transforms still run to draw their numbers).
        self.decode_missing = any(t.random for t in transforms)
        self.index = [
            (i, k) for i, texts in enumerate(self.texts) for k in range(min(len(texts), 1) if one_text else len(texts))
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> dict:
        row, k = self.index[j]
        code = self.missing[row]
        if self.simulate_missing and code == 0:  # official: training rows kept complete get a random fate
            code = random.choice([0, 1, 2])
        text = "" if code == 1 else self.texts[row][k]
        return {
            "image": self.image_views(row, code == 2),
            "text": text,
            "label": self.labels[row],
            "missing_type": code,
        }

    def image_views(self, row: int, missing: bool) -> list[torch.Tensor]:
        """The row's image through every transform; a missing one as MISSING_PIXEL views of the transformed
        shape (read from the image header, without decoding, when the transforms draw no random numbers)."""
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
            # in the decoded views' H x W x 3 layout, so the collate copies it as fast (see to_uint8_tensor)
            hw = [t.output_hw(*img.size) for t in self.transforms]
            return [torch.full((h, w, 3), MISSING_PIXEL, dtype=torch.uint8).permute(2, 0, 1) for h, w in hw]
        views = [t(img) for t in self.transforms]
        return [torch.full_like(v, MISSING_PIXEL) for v in views] if missing else views
