"""Train-loader throughput on synthetic Food-101-like data: 512x384 JPEGs, text padded to 512 tokens.

    python benchmarks/dataloader.py [--samples 384] [--batch 32] [--workers 0 1 2]

Prints samples/s for each worker count, with every image present (all decoded and resized: the worst case)
and with the official default of 70% images missing (those skip decoding; see DATA.md). Each figure is
timed from the second batch on, so worker start-up is left out.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from mdpl.config import make_config
from mdpl.data.datasets import Splits
from mdpl.data.synthetic import generate
from mdpl.data.writers import WRITERS, convert
from mdpl.train.datamodule import MissingDataModule
from mdpl.train.settings import Settings


def samples_per_second(config: dict) -> float:
    dm = MissingDataModule(Splits(Settings.from_config(config).data))
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)  # start-up: worker launch and first batch
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch["label"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=384, help="training samples")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        total = int(args.samples / 0.7) + 1
        generate("food101", tmp, samples=total, classes=10, size=(512, 384))
        convert(WRITERS["food101"], tmp, Path(tmp) / "arrow")
        base = dict(datasets=["Food101"], loss_names={"itm": 0, "mlm": 0, "food101": 1},
                    data_root=str(Path(tmp) / "arrow"), missing_table_root=str(Path(tmp) / "t"),
                    per_gpu_batchsize=args.batch, batch_size=args.batch, max_text_len=512)  # fmt: skip
        print(f"cpu cores: {os.cpu_count()}, torch threads: 1, batch {args.batch}, images 512x384 -> 384x512")
        for ratio in (0.0, 0.7):
            for workers in args.workers:
                cfg = make_config(
                    **base, num_workers=workers, missing_ratio={"train": ratio, "val": ratio, "test": ratio}
                )
                rate = samples_per_second(cfg)
                per = rate / max(workers, 1)
                print(f"image missing {ratio:.0%}: num_workers={workers}: {rate:7.1f} samples/s "
                      f"({per:.1f} per loading process)")  # fmt: skip


if __name__ == "__main__":
    main()
