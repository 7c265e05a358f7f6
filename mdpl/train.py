"""Training and evaluation on Lightning 2: `python run.py with <task config> ...`.

`main(config, command_line)` validates the config (mdpl.settings), seeds, then either fits (optionally
resuming from resume_from) or, with test_only=True, evaluates load_path on the test split with the model
rebuilt from the checkpoint, and appends the records line.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from mdpl.modules.weights import load_checkpoint
from mdpl.settings import Settings, check_files
from mdpl.writers.common import atomic_path

# Lightning's advertising tip and a deprecation inside Lightning itself: nothing a user can act on
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"The number of training batches .* logging interval", category=UserWarning)


class PlainProgress(pl.Callback):
    """Progress as plain lines, for logs written to a file (a progress bar there leaves \\r and escapes)."""

    def __init__(self, every: int = 50) -> None:
        self.every = every

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int):
        if trainer.is_global_zero and (batch_idx + 1) % self.every == 0:
            loss = trainer.callback_metrics.get("train/loss")
            shown = f", train/loss {float(loss):.4f}" if loss is not None else ""
            print(
                f"epoch {trainer.current_epoch} batch {batch_idx + 1}/{trainer.num_training_batches}, "
                f"global step {trainer.global_step}{shown}",
                flush=True,
            )

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/the_metric")
        if trainer.is_global_zero and value is not None and not trainer.sanity_checking:
            print(
                f"epoch {trainer.current_epoch} global step {trainer.global_step}: val/the_metric {float(value):.4f}",
                flush=True,
            )


def precision(settings: Settings) -> str:
    """Lightning's precision; fp16 autocast on the CPU falls back to 32 with a warning."""
    if settings.run.precision == "16-mixed" and settings.devices[0] == "cpu":
        # fp16 autocast is a GPU feature; 32 keeps CPU results exact (bf16 would change the numerics)
        warnings.warn(
            "precision=16 needs a GPU: running on the CPU in 32-bit (precision=32); "
            "pass precision=bf16 for bf16 autocast on the CPU",
            stacklevel=2,
        )
        return "32-true"
    return settings.run.precision


def path_stem(path: str) -> str:
    """A file's or folder's name without its extension ("" for none)."""
    return Path(path.rstrip("/")).stem if path else ""


def run_name(settings: Settings) -> str:
    """Official log folder name {exp_name}_seed{seed}_from_{load_path stem}; an evaluation adds its
    test_exp_name and test missing setting, so evaluations of one checkpoint land apart."""
    run = settings.run
    name = f"{run.exp_name}_seed{run.seed}_from_{path_stem(run.load_path)}"
    if run.test_only:
        d = settings.data
        tag = f"_{run.test_exp_name}" if run.test_exp_name else ""
        name += f"_test{tag}_missing_{d.missing_type['test']}_{d.missing_ratio['test']:g}"
    return name


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary name, flushed to disk, then renamed: a full disk or a kill
    mid-write leaves the previous last.ckpt intact and no truncated file that resume or sweep would read."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        folder = os.open(path.parent, os.O_RDONLY)
        try:  # the rename itself reaches the disk
            os.fsync(folder)
        finally:
            os.close(folder)


class LastCheckpoint(ModelCheckpoint):
    """last.ckpt at every validation, and once more when the fit ends after optimizer steps that no validation
    followed (val_check_interval < 1 that does not divide the epoch): last.ckpt then always holds the final
    weights, and a later resume from it continues exactly."""

    def __init__(self) -> None:
        super().__init__(filename="last", save_top_k=1, enable_version_counter=False)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        super().on_train_end(trainer, module)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


def new_version_dir(parent: Path) -> Path:
    """Create parent/version_N with the smallest free N; mkdir is atomic, so concurrent runs never share one."""
    parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        try:
            (parent / f"version_{n}").mkdir()
            return parent / f"version_{n}"
        except FileExistsError:
            n += 1


RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")  # set by Lightning, torchrun or SLURM
VERSION_VARIABLE = "MDPL_RUN_VERSION"  # the launcher's version folder, for the DDP processes Lightning starts


def _is_launcher_process() -> bool:
    """True in the process a user started: the DDP processes Lightning launches get LOCAL_RANK > 0, other nodes
    NODE_RANK > 0, and processes started by torchrun or SLURM a RANK / SLURM_PROCID > 0."""
    return all(int(os.environ.get(v) or 0) == 0 for v in RANK_VARIABLES)


def resume_folder(settings: Settings) -> Path | None:
    """The run folder a fit resuming from resume_from continues in: the version folder holding it when it is
    {log_dir}/{name}/version_N/checkpoints/<file> (a run of this log_dir), else None (a new version folder)."""
    if not settings.run.resume_from:
        return None
    ckpt = Path(settings.run.resume_from).resolve()
    folder = ckpt.parent.parent
    is_run = ckpt.parent.name == "checkpoints" and folder.name.startswith("version_") and folder.name[8:].isdigit()
    return folder if is_run and folder.parent.parent == Path(settings.run.log_dir).resolve() else None


class ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps its first `keep_rows` rows (all
    when None): what the interrupted run had logged when it wrote the checkpoint a resumed run starts from
    (later rows are logged again by the resumed run). So a resumed run's metrics.csv stays one continuous file."""

    def __init__(self, log_dir: str, keep_rows: int | None = None) -> None:
        self.keep_rows = keep_rows
        self.rows = 0  # rows in metrics.csv
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        rows = rows if self.keep_rows is None else rows[: self.keep_rows]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys, self.rows = keys, len(rows)

    def save(self) -> None:
        self.rows += len(self.metrics)
        super().save()


class ContinuedCSVLogger(CSVLogger):
    """CSVLogger that continues the metrics.csv of a resumed run (ContinuedWriter) and writes every logged row
    at once (a killed run then loses no row logged before its last checkpoint)."""

    def __init__(self, *args, keep_rows: int | None = None, **kwargs) -> None:
        super().__init__(*args, flush_logs_every_n_steps=1, **kwargs)
        self.keep_rows = keep_rows

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuedWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedWriter(self.log_dir, self.keep_rows)
        return self._experiment


class MetricsRows(pl.Callback):
    """Records in every checkpoint how many rows metrics.csv holds, the rows a run resumed from it keeps."""

    def __init__(self, logger: ContinuedCSVLogger) -> None:
        self.logger = logger

    def state_dict(self) -> dict:
        writer = self.logger.experiment  # a stand-in without rows on processes other than rank 0
        if not isinstance(writer, ContinuedWriter):
            return {}
        writer.save()
        return {"rows": writer.rows}


def build_trainer(
    settings: Settings,
    logger: bool = True,
    checkpoints: bool = True,
    progress: bool = True,
    metrics_rows: int | None = None,
) -> pl.Trainer:
    """The Trainer of a run, logging to {log_dir}/{run name}/version_N: a new N, created here by the launcher
    process, or the folder of resume_from (see resume_folder), whose metrics.csv then keeps its first
    `metrics_rows` rows (those logged up to the checkpoint; all when None)."""
    accelerator, n = settings.devices
    run = settings.run
    callbacks: list[pl.Callback] = []
    loggers: list = []
    if logger:
        folder = resume_folder(settings)
        if folder is not None:  # the resumed run continues in its own folder
            log_dir, name, version = str(folder.parent.parent), folder.parent.name, int(folder.name[8:])
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        else:
            log_dir, name, version = run.log_dir, run_name(settings), None
            if _is_launcher_process():
                version = int(new_version_dir(Path(log_dir) / name).name[8:])
                # DDP processes Lightning starts inherit the environment: they log to the same folder
                os.environ[VERSION_VARIABLE] = f"{name}/{version}"
            elif os.environ.get(VERSION_VARIABLE, "").rpartition("/")[0] == name:
                version = int(os.environ[VERSION_VARIABLE].rpartition("/")[2])
        tb = TensorBoardLogger(log_dir, name=name, version=version, default_hp_metric=False)
        # CSV first: it warns about a folder TensorBoard already wrote to (both share the version folder)
        csv_logger = ContinuedCSVLogger(log_dir, name=name, version=tb.version, keep_rows=metrics_rows)
        loggers = [csv_logger, tb]
        callbacks += [LearningRateMonitor(logging_interval="step"), MetricsRows(csv_logger)]
    if checkpoints:  # under {log folder}/checkpoints: the best by val/the_metric, and last.ckpt at every validation
        callbacks.append(ModelCheckpoint(monitor="val/the_metric", mode="max", save_top_k=1))
        # a second callback: Lightning 2.6's save_last only saves when the best changed
        callbacks.append(LastCheckpoint())
    bar = progress and sys.stderr.isatty()  # a bar on a terminal, plain lines in a log file
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=10) if bar else PlainProgress())
    max_steps = settings.optim.max_steps
    return pl.Trainer(
        accelerator=accelerator,
        devices=n,
        num_nodes=run.num_nodes,
        # every trainable parameter gets a gradient each step (prompts are gathered from stacked banks), so
        # plain DDP; multi-node runs use Lightning's standard launch environment
        strategy="ddp" if n * run.num_nodes > 1 else "auto",
        precision=precision(settings),
        max_epochs=settings.optim.max_epoch if max_steps is None else 1000,
        max_steps=-1 if max_steps is None else max_steps,
        accumulate_grad_batches=settings.accumulation,
        val_check_interval=run.val_check_interval,
        log_every_n_steps=10,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=checkpoints,
        enable_progress_bar=bar,
        fast_dev_run=run.fast_dev_run,
        benchmark=True,  # Lightning's DistributedSampler shards the datamodule's loaders under DDP
        plugins=[AtomicCheckpointIO()],
    )


def fit(settings: Settings) -> pl.Trainer:
    from mdpl.datamodules import build_datamodule
    from mdpl.modules import TaskModule, create_model

    resume, rows = settings.run.resume_from, None
    if resume:  # read once here: a corrupt or unsafe file is refused with its name before any work
        rows = resumed_metrics_rows(load_checkpoint(resume, "resume_from", settings.run.trust_checkpoint), resume)
    module = TaskModule(settings.config, create_model(settings))
    trainer = build_trainer(settings, metrics_rows=rows)
    trainer.fit(
        module, datamodule=build_datamodule(settings), ckpt_path=resume, weights_only=not settings.run.trust_checkpoint
    )
    summary = training_summary(trainer)  # on every process: under DDP trainer.log_dir is a collective broadcast
    if trainer.is_global_zero:
        print(summary, flush=True)
    return trainer


def resumed_metrics_rows(checkpoint: object, path: str) -> int | None:
    """The rows metrics.csv held when resume_from was written (None: not recorded, keep them all)."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("loops"), dict):
        raise ValueError(
            f"resume_from={path!r}: not a checkpoint of a Lightning fit (no training loop state); "
            "to start a new fit from its weights use load_path"
        )
    rows = (checkpoint.get("callbacks") or {}).get(MetricsRows.__qualname__, {}).get("rows")
    return rows if isinstance(rows, int) else None


def training_summary(trainer: pl.Trainer) -> str:
    """The run folder, the best checkpoint with its val/the_metric, and last.ckpt."""
    best, last = trainer.checkpoint_callbacks[0], trainer.checkpoint_callbacks[1]
    score = "n/a" if best.best_model_score is None else f"{float(best.best_model_score):.4f}"
    return "\n".join(
        [
            f"run folder:      {trainer.log_dir}",
            f"best checkpoint: {best.best_model_path or 'none (no validation ran)'} (val/the_metric {score})",
            f"last checkpoint: {last.last_model_path or last.best_model_path or 'none'}",
        ]
    )


def evaluate(config: dict, command_line: set[str] = frozenset()) -> list[dict]:
    """Test load_path with the model rebuilt from its own saved config; append the records line."""
    from mdpl.datamodules import build_datamodule
    from mdpl.datasets import check_data
    from mdpl.gadgets.records import append_records
    from mdpl.modules import TaskModule, model_for_checkpoint

    settings, model = model_for_checkpoint(config["load_path"], config, command_line)
    check_files(settings)
    check_log_dir(settings)
    check_records_root(settings)
    check_data(settings, nonempty=("test",))
    pl.seed_everything(settings.run.seed)  # before the datamodule: the missing tables use the seeded `random`
    trainer = build_trainer(settings)
    results = trainer.test(TaskModule(settings.config, model), datamodule=build_datamodule(settings))
    if trainer.is_global_zero:
        values = {k: float(v) for k, v in results[0].items()}
        print("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items())), flush=True)
        if settings.run.test_exp_name is not None:
            for path in append_records(settings, values):
                print(f"records: appended to {path}", flush=True)
    return results


def check_log_dir(settings: Settings) -> None:
    """log_dir must be a folder this process can write in, or one it can create (its nearest existing parent
    is a writable folder): checked before a run starts, creating nothing."""
    given = settings.run.log_dir
    probe = Path(given).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OSError(f"config log_dir={given!r}: cannot create it ({str(probe)!r} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OSError(f"config log_dir={given!r}: cannot create it ({str(probe)!r} is not writable)")


def check_records_root(settings: Settings) -> None:
    """With test_exp_name, records_root must be creatable before any evaluation runs."""
    if settings.run.test_exp_name is None:
        return
    root = Path(settings.run.records_root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"config records_root={str(root)!r}: cannot create it ({e.strerror})") from None


def main(config: dict, command_line: set[str] = frozenset()) -> list[dict] | None:
    """Fit, or test with test_only=True (returns trainer.test's metrics). `command_line` names the keys the
    user set explicitly (run.py passes them): evaluation refuses a model key that disagrees with the checkpoint."""
    if config.get("test_only") and config.get("load_path"):  # model keys come from the checkpoint
        return evaluate(config, command_line)
    from mdpl.datasets import check_data

    settings = Settings.from_config(config)
    check_files(settings)
    check_log_dir(settings)
    check_data(settings)  # labels, empty splits: before anything is written
    pl.seed_everything(settings.run.seed)  # before the datamodule: the missing tables use the seeded `random`
    fit(settings)
    return None
