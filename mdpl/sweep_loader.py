"""The sweep's single-pass evaluation: every grid point of one or more checkpoints from one pass over the test split.

Each test sample is read (and its image decoded and transformed) once, together with its missing code at
every grid point; one batch of the real inputs is copied to the device, and from it the batch of each grid
point is built there (a missing image: its views set to MISSING_PIXEL inside the image; a missing text: the
token ids and mask of ""). These are, value for value, the batches a `test_only` run at that point gets from
ArrowDataset + Collator: the same samples in the same order, cut at the same per_gpu_batchsize. Each grid point
has its own TaskMetrics and its own torch (and CUDA) RNG state, set before its forward and saved after, so the
random numbers a forward draws (patch_order="random") are those of a run that started from
`pl.seed_everything(seed)`.

Exactness needs deterministic test transforms and a single process: `obstacle` names what rules this path out
(the sweep then tests each point with Lightning).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mdpl.datamodules import build_collator, usable_workers
from mdpl.datamodules.collate import Collator
from mdpl.datasets import ArrowDataset
from mdpl.gadgets.metrics import TaskMetrics
from mdpl.modules.frozen_cast import MIXED_DTYPES, frozen_cast
from mdpl.settings import Settings
from mdpl.train import precision
from mdpl.transforms import MISSING_PIXEL, image_area


def obstacle(settings: Settings, transforms_random: bool) -> str | None:
    """Why the single-pass evaluation cannot give a test_only run's exact metrics (None: it can)."""
    if transforms_random:
        return f"val_transform_keys={list(settings.data.val_transform_keys)} draws random numbers per image"
    accelerator, n = settings.devices
    if n * settings.run.num_nodes > 1:
        what = "num_gpus" if accelerator == "gpu" else "cpu_processes"
        return f"{what}={n} x num_nodes={settings.run.num_nodes} shards the test split over several processes"
    if settings.run.fast_dev_run:
        return "fast_dev_run tests a few batches only"
    return None


def device_of(settings: Settings) -> torch.device:
    """CUDA (the first visible GPU) when num_gpus > 0 and CUDA is available, else the CPU."""
    return torch.device("cuda", 0) if settings.run.num_gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(settings: Settings, device: torch.device) -> torch.dtype | None:
    """The run's precision as an autocast dtype (None: 32-bit), as Lightning's mixed-precision plugin uses it."""
    p = precision(settings)
    if p == "16-mixed" and device.type == "cpu":  # fp16 autocast is a GPU feature (see mdpl.train.precision)
        return None
    return MIXED_DTYPES.get(p)


class GridTestSet(Dataset):
    """The test split (one ArrowDataset per configured dataset, concatenated in order) with the missing codes of
    several tables. Items: {"image": views, "text", "label", "codes": one code per table}.

    An image is decoded when some table keeps it; one missing in every table gets MISSING_PIXEL views of its
    transformed shape, read from the image header (the transforms are deterministic)."""

    def __init__(self, parts: Sequence[ArrowDataset], tables: Sequence[Sequence[Tensor]]) -> None:
        """tables[u][p]: table u's codes for the rows of part p."""
        if any(t.random for part in parts for t in part.transforms):
            raise ValueError("GridTestSet needs deterministic transforms")
        self.parts = list(parts)
        self.codes = [
            list(zip(*(table[p].long().tolist() for table in tables))) if tables else [()] * len(part.texts)
            for p, part in enumerate(self.parts)
        ]  # per part, per row: the codes of every table
        self.ends = []
        total = 0
        for part in self.parts:
            total += len(part)
            self.ends.append(total)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, j: int) -> dict:
        p = bisect.bisect_right(self.ends, j)
        part = self.parts[p]
        row, k = part.index[j - (self.ends[p - 1] if p else 0)]
        codes = self.codes[p][row]
        views = part.image_views(row, missing=all(c == 2 for c in codes))  # decoded if some table keeps it
        return {"image": views, "text": part.texts[row][k], "label": part.labels[row], "codes": codes}


class GridCollator:
    """One batch of the real inputs for every table: the Collator's batch of the items as if complete, plus
    "view_hw" (views x B x 2), "codes" (tables x B) and the token ids and mask of "" ("empty_ids",
    "empty_masks", 1 x max_text_len). `point_batch` turns it into each table's batch."""

    def __init__(self, collator: Collator) -> None:
        self.collator = collator
        self._empty: dict | None = None

    def __call__(self, items: list[dict]) -> dict:
        batch = self.collator([{**it, "missing_type": 0} for it in items])
        del batch["missing_type"]
        if self._empty is None:
            c = self.collator
            self._empty = c.tokenizer([""], padding="max_length", truncation=True, max_length=c.max_text_len,
                                      return_tensors="pt")  # fmt: skip
        batch["empty_ids"], batch["empty_masks"] = self._empty["input_ids"], self._empty["attention_mask"]
        views = len(items[0]["image"])
        batch["view_hw"] = torch.tensor([[list(it["image"][v].shape[1:]) for it in items] for v in range(views)])
        batch["codes"] = torch.tensor([it["codes"] for it in items], dtype=torch.long).reshape(len(items), -1).T.clone()
        return batch


def to_device(batch: dict, device: torch.device) -> dict:
    def move(v):
        if isinstance(v, Tensor):
            return v.to(device, non_blocking=True)
        if isinstance(v, list) and v and isinstance(v[0], Tensor):
            return [move(x) for x in v]
        return v

    return {k: move(v) for k, v in batch.items()}


def inside_masks(batch: dict) -> list[Tensor]:
    """Per view: B x 1 x H x W, True inside each sample's image (on the canvas)."""
    return [image_area(canvas, hw) for canvas, hw in zip(batch["image"], batch["view_hw"])]


def point_batch(batch: dict, codes: Tensor, host_codes: list[int], inside: list[Tensor]) -> dict:
    """The batch ArrowDataset + Collator give for these missing codes (`codes` on the batch's device, `host_codes`
    the same as ints), from a GridCollator batch on the device."""
    images = batch["image"]
    if 2 in host_codes:
        gone = (codes == 2)[:, None, None, None]
        images = [torch.where(gone & mask, MISSING_PIXEL, canvas) for canvas, mask in zip(images, inside)]
    ids, masks = batch["text_ids"], batch["text_masks"]
    if 1 in host_codes:
        silent = (codes == 1)[:, None]
        ids = torch.where(silent, batch["empty_ids"], ids)
        masks = torch.where(silent, batch["empty_masks"], masks)
    return {
        "image": images,
        "image_hw": batch["image_hw"],
        "text": ["" if c == 1 else t for c, t in zip(host_codes, batch["text"])],
        "text_ids": ids,
        "text_masks": masks,
        "label": batch["label"],
        "missing_type": codes,
    }


@dataclass
class GridPoint:
    """One evaluation: `module` (index into the pass's modules) on table `table`, drawing random numbers from its
    own saved torch CPU (and CUDA) RNG state."""

    module: int
    table: int
    cpu_rng: Tensor
    cuda_rng: Tensor | None = None
    metrics: TaskMetrics | None = field(default=None, repr=False)


@contextmanager
def _cudnn_benchmark(on: bool):
    """cudnn.benchmark as Lightning's Trainer(benchmark=True) sets it, restored afterwards."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def evaluate_grid(
    settings: Settings, modules: Sequence, dataset: GridTestSet, points: Sequence[GridPoint]
) -> list[dict]:
    """Test metrics (trainer.test's dict: "test/the_metric", "{task}/test/{name}" as floats; {} for an empty test
    split) of each point, from one pass over `dataset` batched as the test loader of `settings` batches."""
    device = device_of(settings)
    dtype = autocast_dtype(settings, device)
    workers = usable_workers(settings.data.num_workers)
    loader = DataLoader(
        dataset,
        batch_size=settings.data.per_gpu_batchsize,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=GridCollator(build_collator(settings)),
    )
    for module in modules:
        module.to(device).eval()
    for point in points:
        cfg = modules[point.module].settings.model
        point.metrics = TaskMetrics({t: cfg.num_classes(t) for t in cfg.tasks}).to(device)
    by_table: dict[int, list[GridPoint]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    cuda = device.type == "cuda"
    # as Lightning's MixedPrecision plugin (cache_enabled=False); no context for 32-bit
    autocast = nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype, cache_enabled=False)
    # the frozen backbone in the autocast dtype for the whole pass, as FrozenCastCallback holds it in a test
    with ExitStack() as stack:
        for module in modules:
            stack.enter_context(frozen_cast(module, dtype))
        stack.enter_context(_cudnn_benchmark(True if cuda else torch.backends.cudnn.benchmark))
        stack.enter_context(torch.inference_mode())
        for host in loader:
            batch = to_device(host, device)
            codes = host["codes"].tolist()
            inside = inside_masks(batch) if any(2 in c for c in codes) else []
            for table, members in by_table.items():
                own = point_batch(batch, batch["codes"][table], codes[table], inside)
                for point in members:
                    torch.set_rng_state(point.cpu_rng)
                    if cuda and point.cuda_rng is not None:
                        torch.cuda.set_rng_state(point.cuda_rng, device)
                    with autocast:
                        out = modules[point.module](own)
                        point.metrics.update("test", out)
                    point.cpu_rng = torch.get_rng_state()
                    if cuda:
                        point.cuda_rng = torch.cuda.get_rng_state(device)
    results = []
    for point in points:
        metrics, point.metrics = point.metrics, None
        values = metrics.compute("test") if metrics.has_samples("test") else {}
        results.append({k: float(v) for k, v in values.items()})
    return results
