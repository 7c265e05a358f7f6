"""Training and evaluation on Lightning 2 (REFERENCE §9, §10): `python run.py with <task config> ...`.

main(config) checks the configuration, seeds, builds the datamodule, the model and the trainer, then
fits (optionally resuming from resume_from) or, with test_only=True, tests load_path on the test split.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

PRECISIONS = {"16": "16-mixed", "16-mixed": "16-mixed", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
              "32": "32-true", "32-true": "32-true"}
MISSING_TYPES = ("text", "image", "both")


def plain(obj):
    """sacred's read-only config -> plain dicts and lists (the datamodule writes into it, as official)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def devices(config: dict) -> tuple[str, int]:
    """(accelerator, processes per node): GPUs from num_gpus; num_gpus=0 runs cpu_processes CPU processes."""
    if config["num_gpus"] > 0:
        return "gpu", config["num_gpus"]
    return "cpu", config["cpu_processes"]


def accumulation(config: dict) -> int:
    """Official: batch_size // (per_gpu_batchsize * devices * nodes) batches per optimizer step."""
    _, n = devices(config)
    return config["batch_size"] // (config["per_gpu_batchsize"] * n * config["num_nodes"])


def precision(config: dict) -> str:
    p = str(config["precision"])
    if p not in PRECISIONS:
        raise ValueError(f"config precision={config['precision']!r}: expected 16, 'bf16' or 32")
    if PRECISIONS[p] == "16-mixed" and devices(config)[0] == "cpu":
        # fp16 autocast is a GPU feature; 32 keeps CPU results exact (bf16 would change the numerics)
        warnings.warn("precision=16 needs a GPU: running on the CPU in 32-bit (precision=32); "
                      "pass precision=bf16 for bf16 autocast on the CPU", stacklevel=2)
        return "32-true"
    return PRECISIONS[p]


def arrow_files(config: dict) -> list[tuple[Path, str]]:
    """(Arrow path, make_arrow command creating it) for every split of every configured dataset."""
    from mdpl.writers import WRITERS

    by_folder = {Path(spec.default_out).name: spec for spec in WRITERS.values()}
    out = []
    for name in config["datasets"]:
        if name not in by_folder:
            raise ValueError(f"config datasets={config['datasets']!r}: {name!r} is not one of {sorted(by_folder)} "
                             "(use a task_finetune_* named config)")
        spec = by_folder[name]
        command = (f"python make_arrow.py --dataset {spec.name} --root <folder holding {spec.raw_subdir}/> "
                   f"--out {config['data_root']}")
        out += [(Path(config["data_root"]) / f"{stem}.arrow", command) for stem in spec.splits.values()]
    return out


def check_config(config: dict) -> None:
    """Raise a clear error for bad input before any work (files are checked, nothing is read)."""
    hints = {"per_gpu_batchsize": " (it has no default: set it, e.g. per_gpu_batchsize=32)", "num_gpus": " (0: CPU)"}
    for key, low in (("per_gpu_batchsize", 1), ("batch_size", 1), ("num_nodes", 1), ("num_gpus", 0), ("cpu_processes", 1)):
        if not isinstance(config[key], int) or config[key] < low:
            raise ValueError(f"config {key}={config[key]!r}: expected an integer >= {low}{hints.get(key, '')}")
    accelerator, n = devices(config)
    per_step = config["per_gpu_batchsize"] * n * config["num_nodes"]
    if config["batch_size"] % per_step:
        raise ValueError(f"config batch_size={config['batch_size']} is not a multiple of per_gpu_batchsize x devices "
                         f"x num_nodes = {config['per_gpu_batchsize']} x {n} x {config['num_nodes']} = {per_step} "
                         "(gradients are accumulated over batch_size // that many batches)")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError(f"config num_gpus={config['num_gpus']} but no CUDA GPU is available; use num_gpus=0 for the CPU")
    if str(config["precision"]) not in PRECISIONS:
        raise ValueError(f"config precision={config['precision']!r}: expected 16, 'bf16' or 32")
    if not config["data_root"] or not os.path.isdir(config["data_root"]):
        raise FileNotFoundError(f"config data_root={config['data_root']!r}: no such folder (the folder holding the "
                                "Arrow files written by make_arrow.py)")
    for path, command in arrow_files(config):
        if not path.is_file():
            raise FileNotFoundError(f"Arrow file {str(path)!r} not found; create it with: {command}")
    for key in ("load_path", "resume_from"):
        if config[key] and not os.path.exists(config[key]):
            raise FileNotFoundError(f"config {key}={config[key]!r}: no such file")
    if config["test_only"] and not config["load_path"]:
        raise ValueError("config test_only=True needs load_path=<fine-tuned checkpoint>")
    if config["test_type"] is not None and config["test_type"] not in MISSING_TYPES:
        raise ValueError(f"config test_type={config['test_type']!r}: expected one of {MISSING_TYPES} or None")
    if config["test_ratio"] is not None and not 0 <= config["test_ratio"] <= 1:
        raise ValueError(f"config test_ratio={config['test_ratio']!r}: expected a number in [0, 1] or None")


def run_name(config: dict) -> str:
    """Official log folder name: {exp_name}_seed{seed}_from_{basename(load_path) without '.ckpt'}."""
    return f"{config['exp_name']}_seed{config['seed']}_from_{os.path.basename(config['load_path'])[:-5]}"


def build_trainer(config: dict, logger: bool = True, checkpoints: bool = True, progress: bool = True) -> pl.Trainer:
    accelerator, n = devices(config)
    callbacks: list[pl.Callback] = []
    loggers: list = []
    if logger:
        tb = TensorBoardLogger(config["log_dir"], name=run_name(config), default_hp_metric=False)
        # CSV first: it warns about a folder TensorBoard already wrote to (both share the version folder)
        loggers = [CSVLogger(config["log_dir"], name=run_name(config), version=tb.version), tb]
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if checkpoints:  # under {log folder}/checkpoints: the best by val/the_metric, and last.ckpt at every validation
        callbacks.append(ModelCheckpoint(monitor="val/the_metric", mode="max", save_top_k=1))
        # a second callback: Lightning 2.6's save_last only saves when the best changed
        callbacks.append(ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False))
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    max_steps = config["max_steps"]
    return pl.Trainer(
        accelerator=accelerator,
        devices=n,
        num_nodes=config["num_nodes"],
        # every trainable parameter gets a gradient each step (prompts are gathered from stacked banks), so
        # plain DDP; multi-node runs use Lightning's standard launch environment
        strategy="ddp" if n * config["num_nodes"] > 1 else "auto",
        precision=precision(config),
        max_epochs=config["max_epoch"] if max_steps is None else 1000,
        max_steps=-1 if max_steps is None else max_steps,
        accumulate_grad_batches=accumulation(config),
        val_check_interval=config["val_check_interval"],
        log_every_n_steps=10,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=checkpoints,
        enable_progress_bar=progress,
        fast_dev_run=config["fast_dev_run"],
        benchmark=True,  # Lightning's DistributedSampler shards the datamodule's loaders under DDP
    )


def main(_config: dict) -> list[dict] | None:
    """Fit, or test with test_only=True; returns trainer.test's metrics when testing."""
    from mdpl.datamodules import build_datamodule
    from mdpl.modules import MemPromptTransformer

    config = plain(_config)
    check_config(config)
    pl.seed_everything(config["seed"])  # before the datamodule: the missing tables use the seeded `random`
    dm = build_datamodule(config)  # applies test_ratio / test_type to config (recorded in hparams)
    model = MemPromptTransformer(config)  # raises for a checkpoint of another task or method
    trainer = build_trainer(config)
    if config["test_only"]:
        return trainer.test(model, datamodule=dm)
    trainer.fit(model, datamodule=dm, ckpt_path=config["resume_from"])
    return None
