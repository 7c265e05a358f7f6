"""One dataset class for the three tasks: a memory-mapped arrow file plus a missing-modality table."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import Dataset

from mdpl.transforms import PixelBert

Image.MAX_IMAGE_PIXELS = None  # as officially


def read_arrow(path: str | Path, make_hint: str = "") -> pa.Table:
    """The whole arrow IPC file, memory-mapped (image bytes are paged in on access)."""
    if not Path(path).is_file():
        hint = f"; create it with: {make_hint}" if make_hint else ""
        raise FileNotFoundError(f"arrow file not found: {path}{hint}")
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


class ArrowDataset(Dataset):
    """Items {"image": [tensor per transform], "text": str, "label": tensor, "missing_type": int}.

    Index j runs row-major over (row, text) pairs: one sample per text of a row (MM-IMDb: one per plot,
    all sharing the row's image, label and missing code); one_text keeps only each row's first text.
    A missing text becomes ""; a missing image becomes all-ones tensors of the transformed shapes.
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
    ) -> None:
        if len(missing) != table.num_rows:
            raise ValueError(f"missing table has {len(missing)} rows, the arrow table {table.num_rows}")
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
        img = Image.open(io.BytesIO(self.images[row].as_py()))
        if code == 2 and not self.decode_missing:
            views = [torch.ones(3, *t.output_hw(*img.size)) for t in self.transforms]
        else:
            img = img.convert("RGB")
            views = [t(img) for t in self.transforms]
            if code == 2:
                views = [torch.ones_like(v) for v in views]
        text = "" if code == 1 else self.texts[row][k]
        return {"image": views, "text": text, "label": self.labels[row], "missing_type": code}
