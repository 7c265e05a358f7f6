"""Shared pieces of the training tests (tests/test_train_*.py): synthetic Arrow data and a tiny config."""

from __future__ import annotations

import csv
from pathlib import Path

from mdpl.config import ex

REPO = Path(__file__).resolve().parents[1]
# task -> (synthetic generator, make_arrow --dataset, named config)
TASKS = {
    "food101": ("food101", "food101", "task_finetune_food101"),
    "mmimdb": ("mmimdb", "mmimdb", "task_finetune_mmimdb"),
    "hatememes": ("hateful_memes", "hateful_memes", "task_finetune_hatememes"),
}
TINY = dict(  # a ViLT small enough for CPU tests (seconds per run)
    hidden_size=32, num_layers=2, num_heads=2, image_size=64, patch_size=32, max_text_len=16,
    gen_prompt_layers=[0, 1], shared_prompt_layers=[0, 1], prompt_layers=[0, 1], gen_prompt_length=4,
    shared_prompt_length=4, prompt_length=4, mem_size=4, top_k=2, food101_class_num=4,
    num_gpus=0, precision=32, num_workers=0, per_gpu_batchsize=4, batch_size=8, max_epoch=2,
    max_steps=None, learning_rate=1e-3, val_check_interval=1.0, patch_order="fixed",
)


def make_arrows(root: Path, task: str, samples: int = 40) -> Path:
    """Synthetic raw data converted by make_arrow's writer; returns the data_root."""
    from mdpl.synthetic import generate
    from mdpl.writers import WRITERS, convert

    generator, writer, _ = TASKS[task]
    generate(generator, root / "raw", samples=samples, classes=4, side_range=(32, 96))
    convert(WRITERS[writer], root / "raw", root / "arrows")
    return root / "arrows"


def tiny_config(task: str, data: Path, out: Path, **updates) -> dict:
    """The task's named config with TINY and every output folder under `out`."""
    paths = dict(data_root=str(data), log_dir=str(out / "result"), records_root=str(out / "records"),
                 missing_table_root=str(out / "tables") + "/")
    run = ex.run("print_config", named_configs=[TASKS[task][2]], config_updates={**TINY, **paths, **updates},
                 options={"--loglevel": "ERROR"})
    return run.config


def read_metrics(run_dir: Path) -> list[dict]:
    """Rows of the CSV logger's metrics.csv in a run folder."""
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def last_value(rows: list[dict], key: str) -> float:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")][-1]
