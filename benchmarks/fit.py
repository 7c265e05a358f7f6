"""End-to-end throughput: training and a sweep through the real entry points, next to model-only figures.

    python benchmarks/fit.py                 # CUDA: ViT-B/32, fp16, Food-101-sized synthetic data, 16 workers
    python benchmarks/fit.py --quick         # CPU: a small model, 1,000 samples (a few minutes on 2 cores)

It writes a synthetic Food-101 (512x384 JPEGs, titles of real length) and converts it with make_arrow's
writer, then (1) trains one epoch with `mdpl.train.trainer.train` (what `python run.py with ...` runs) and times
the steady-state train batches (the first `--skip` batches and every validation excluded) and the validation
batches; (2) sweeps the trained checkpoint over 3 types x `--ratios` with `mdpl.sweep.grid.sweep` and times the
whole call and, within it, the writing of its tables and plots (PNG, PDF, SVG: about a second on a CPU, whatever
the data size); (3) times the same model on one resident batch (no loader): train steps and eval steps. The ratios
printed are end-to-end / model-only of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from mdpl.config import make_config
from mdpl.data.datasets import Splits
from mdpl.data.synthetic import generate
from mdpl.data.writers import WRITERS, convert
from mdpl.model.factory import create_model
from mdpl.sweep import grid
from mdpl.train import trainer
from mdpl.train.datamodule import MissingDataModule
from mdpl.train.module import TaskModule
from mdpl.train.settings import Settings

QUICK = dict(hidden_size=128, num_layers=4, num_heads=4, image_size=128, gen_prompt_length=8, shared_prompt_length=8,
             gen_prompt_layers=[0, 1], shared_prompt_layers=[0, 1], max_text_len=64)  # fmt: skip


class Timer(pl.Callback):
    """Wall time of each train batch (from the previous batch end: loading included) and of validation."""

    def __init__(self, skip: int) -> None:
        self.skip, self.train, self.val, self.val_samples = skip, [], 0.0, 0
        self.last = self.val_start = None

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._sync()
        now = time.perf_counter()
        if self.last is not None and batch_idx >= self.skip:
            self.train.append((now - self.last, len(batch["label"])))
        self.last = now

    def on_validation_start(self, trainer, module) -> None:
        self._sync()
        self.val_start = time.perf_counter()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_samples += 0 if trainer.sanity_checking else len(batch["label"])

    def on_validation_end(self, trainer, module) -> None:
        self._sync()
        if not trainer.sanity_checking:
            self.val += time.perf_counter() - self.val_start
        self.last = None  # the next train batch's time would include the validation


def model_only(config: dict, loader, steps: int) -> tuple[float, float]:
    """(train, eval) samples/s of the TaskModule on one resident batch, with the run's precision."""
    settings = Settings.from_config(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = TaskModule(settings.config, create_model(settings.model)).to(device)
    batch = next(iter(loader))
    batch = {
        k: ([v[0].to(device)] if k == "image" else v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()
    }
    p = trainer.precision(settings)
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(p)
    amp = dict(device_type=device.type, dtype=dtype, enabled=dtype is not None)
    opt = torch.optim.AdamW([q for q in module.parameters() if q.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=p == "16-mixed")
    n = len(batch["label"])
    out = []
    for train in (True, False):
        module.train(train)
        for i in range(steps + 2):  # two warm-up steps
            if i == 2:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            with torch.autocast(**amp), torch.set_grad_enabled(train):
                loss = module(batch)["food101_loss"]
            if train:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(n * steps / (time.perf_counter() - t0))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--samples",
        type=int,
        help="default 3000 (1000 with --quick: 150 test samples, enough for the "
        "sweep's fixed costs, a second or two, not to dominate)",
    )
    ap.add_argument("--workers", type=int, help="default 16 (2 with --quick)")
    ap.add_argument("--batch", type=int, help="default 32 (8 with --quick)")
    ap.add_argument("--skip", type=int, default=5, help="train batches not timed at the start")
    ap.add_argument("--ratios", default="0.0,0.5,1.0")
    ap.add_argument("--compile", action="store_true", help="torch_compile=True (training, sweep and model-only)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    samples = args.samples or (1000 if args.quick else 3000)
    workers = args.workers if args.workers is not None else (2 if args.quick else 16)
    batch = args.batch or (8 if args.quick else 32)
    ratios = [float(r) for r in args.ratios.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate("food101", root / "raw", samples=samples, classes=101 if samples >= 1010 else 10, size=(512, 384))
        convert(WRITERS["food101"], root / "raw", root / "arrows")
        config = make_config(
            "task_finetune_food101", data_root=str(root / "arrows"), log_dir=str(root / "result"),
            missing_table_root=str(root / "tables") + "/", per_gpu_batchsize=batch, batch_size=batch,
            num_workers=workers, max_epoch=1, val_check_interval=0.5, num_gpus=1 if cuda else 0,
            precision=16 if cuda else 32, food101_class_num=101 if samples >= 1010 else 10, torch_compile=args.compile,
            **(QUICK if args.quick else {}),
        )  # fmt: skip
        timer = Timer(args.skip)
        build = trainer.build_trainer

        def with_timer(*a, **k):
            built = build(*a, **k)
            built.callbacks.append(timer)
            return built

        trainer.build_trainer = with_timer
        with contextlib.redirect_stdout(io.StringIO()):  # a throwaway run in a temporary folder: no output
            trainer.train(config)
        trainer.build_trainer = build
        seconds = sum(t for t, _ in timer.train)
        train_sps = sum(n for _, n in timer.train) / seconds
        val_sps = timer.val_samples / timer.val if timer.val else float("nan")

        dm = MissingDataModule(Splits(Settings.from_config(config).data))
        dm.setup()
        model_train, model_eval = model_only(config, dm.train_dataloader(), steps=10 if cuda else 3)
        test_samples = len(dm.datasets["test"])

        [ckpt] = glob.glob(str(root / "result" / "*" / "version_0" / "checkpoints" / "last.ckpt"))
        write_outputs, output_s = grid.write_outputs, []

        def timed_write_outputs(*args, **kwargs):  # tables and plots: a fixed cost, whatever the data size
            t = time.perf_counter()
            try:
                return write_outputs(*args, **kwargs)
            finally:
                output_s.append(time.perf_counter() - t)

        grid.write_outputs = timed_write_outputs
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # (the accuracy of one epoch of a small model)
            grid.sweep({**config, "load_path": ckpt, "sweep_ratios": ratios})
        sweep_s = time.perf_counter() - t0
        grid.write_outputs = write_outputs
        points = 3 * len(ratios)
        sweep_model_s = points * test_samples / model_eval

    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    compiled = ", torch_compile" if args.compile else ""
    print(f"\ndevice: {device}; {samples} samples (512x384 JPEGs), batch {batch}, {workers} workers{compiled}")
    print(f"model only:  train {model_train:.1f} samples/s, eval {model_eval:.1f} samples/s")
    print(f"run.py fit:  train {train_sps:.1f} samples/s ({train_sps / model_train:.0%} of model-only), "
          f"validation {val_sps:.1f} samples/s ({val_sps / model_eval:.0%} of model-only eval)")  # fmt: skip
    print(f"sweep:       {points} points x {test_samples} test samples in {sweep_s:.1f} s = "
          f"{sweep_s / sweep_model_s:.2f}x the model-only eval time ({sweep_model_s:.1f} s); without writing its "
          f"tables and plots ({sum(output_s):.1f} s): {(sweep_s - sum(output_s)) / sweep_model_s:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
