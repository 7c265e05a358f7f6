"""Training on Lightning 2: the Trainer of every run (fit, test_only, sweep), run folders, and the fit itself.

`train(config)` validates the configuration (mdpl.train.settings), the files it names and the machine, then fits
(resuming from resume_from when set). Every check that can refuse a run runs before any folder is created. The
run folder is {log_dir}/{run name}/version_N, created by the process the user started; a resumed fit continues
the folder of its checkpoint.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mdpl.data.datasets import Splits
from mdpl.errors import ConfigError, Interrupted
from mdpl.files import atomic_path, fsync_path, remove_stale_temporaries
from mdpl.model.factory import create_model
from mdpl.model.weights import load_checkpoint
from mdpl.train.datamodule import MissingDataModule
from mdpl.train.module import TaskModule
from mdpl.train.resume import ExactResume, MetricsCSV, check_resume
from mdpl.train.settings import Settings, check_files

# Lightning's advertising tip and a deprecation inside Lightning itself: nothing a user can act on
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"The number of training batches .* logging interval", category=UserWarning)

RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")  # set by Lightning, torchrun or SLURM


class PlainProgress(pl.Callback):
    """Progress as plain lines, for logs written to a file (a progress bar there leaves \\r and escapes)."""

    def __init__(self, every: int = 50) -> None:
        self.every = every

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int):
        if trainer.is_global_zero and (batch_idx + 1) % self.every == 0:
            loss = trainer.callback_metrics.get("train/loss")
            shown = f", train/loss {float(loss):.4f}" if loss is not None else ""
            print(f"epoch {trainer.current_epoch} batch {batch_idx + 1}/{trainer.num_training_batches}, "
                  f"global step {trainer.global_step}{shown}", flush=True)  # fmt: skip

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/the_metric")
        if trainer.is_global_zero and value is not None and not trainer.sanity_checking:
            print(f"epoch {trainer.current_epoch} global step {trainer.global_step}: val/the_metric {float(value):.4f}",
                  flush=True)  # fmt: skip


def precision(settings: Settings) -> str:
    """Lightning's precision, for training, test_only and the sweep alike; fp16 autocast on the CPU falls back to
    32 with a warning (bf16 would change the numerics)."""
    if settings.run.precision == "16-mixed" and settings.devices[0] == "cpu":
        warnings.warn("precision=16 needs a GPU: running on the CPU in 32-bit (precision=32); pass precision=bf16 "
                      "for bf16 autocast on the CPU", stacklevel=2)  # fmt: skip
        return "32-true"
    return settings.run.precision


def check_machine(settings: Settings) -> None:
    """The devices the run asks for exist (before anything is written)."""
    accelerator, n = settings.devices
    if accelerator == "gpu" and torch.cuda.device_count() < n:
        found = torch.cuda.device_count()
        raise ConfigError(
            f"config num_gpus={n}: this machine has {found} CUDA GPU{'s' * (found != 1)}"
            f"{'' if found else '; set num_gpus=0 to run on the CPU'}"
        )


def path_stem(path: str) -> str:
    """A file's or folder's name without its extension ("" for none)."""
    return Path(path.rstrip("/")).stem if path else ""


def run_name(settings: Settings) -> str:
    """Official log folder name {exp_name}_seed{seed}_from_{load_path stem}; an evaluation adds its test_exp_name
    and test missing setting, so that evaluations of one checkpoint land apart."""
    run = settings.run
    name = f"{run.exp_name}_seed{run.seed}_from_{path_stem(run.load_path)}"
    if run.test_only:
        d = settings.data
        tag = f"_{run.test_exp_name}" if run.test_exp_name else ""
        name += f"_test{tag}_missing_{d.missing_type['test']}_{d.missing_ratio['test']:g}"
    return name


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary name, flushed to disk, then renamed: a full disk or a kill mid-write
    leaves the previous file intact and no truncated file that a resume or sweep would read."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            if "No space left" in str(e) or "unexpected pos" in str(e) or getattr(e, "errno", None) == 28:
                raise OSError(28, f"no space left on device while writing {path} (the previous file is kept)") from e
            raise
        fsync_path(path.parent)  # the rename itself reaches the disk


class LastCheckpoint(Checkpoint):
    """last.ckpt beside the best checkpoint at every validation, and once more at the end of the fit when optimizer
    steps followed the last validation: it always holds the latest weights, and a resume from it continues exactly."""

    def __init__(self, best: ModelCheckpoint) -> None:
        self.best, self.step = best, -1

    @property
    def last_model_path(self) -> str:
        return os.path.join(self.best.dirpath, "last.ckpt") if self.step >= 0 else ""

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.global_step == self.step:
            return
        self.step = trainer.global_step
        # the whole state, as a resume needs it (said explicitly: Lightning logs a line when it has to assume it)
        trainer.save_checkpoint(os.path.join(self.best.dirpath, "last.ckpt"), weights_only=False)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._save(trainer)


def is_launcher_process() -> bool:
    """True in the process a user started: the DDP processes Lightning launches get LOCAL_RANK > 0, other nodes
    NODE_RANK > 0, and processes started by torchrun or SLURM a RANK / SLURM_PROCID > 0."""
    return all(int(os.environ.get(v) or 0) == 0 for v in RANK_VARIABLES)


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


def resume_folder(settings: Settings) -> Path | None:
    """The run folder a fit resuming from resume_from continues: the version folder holding it when it is
    {log_dir}/{name}/version_N/checkpoints/<file> (a run of this log_dir), else None (a new version folder)."""
    if not settings.run.resume_from:
        return None
    ckpt = Path(settings.run.resume_from).resolve()
    folder = ckpt.parent.parent
    is_run = ckpt.parent.name == "checkpoints" and folder.name.startswith("version_") and folder.name[8:].isdigit()
    return folder if is_run and folder.parent.parent == Path(settings.run.log_dir).resolve() else None


def run_folder(settings: Settings) -> Path:
    """The run's version folder (absolute, so that best-checkpoint tracking survives a resume from another path):
    created here by the launcher process; the other processes only name it (rank 0 writes every file)."""
    resumed = resume_folder(settings)
    if resumed is not None:
        return resumed
    parent = Path(settings.run.log_dir).resolve() / run_name(settings)
    return new_version_dir(parent) if is_launcher_process() else parent / "version_unused"


def build_trainer(
    settings: Settings,
    folder: Path | None,
    fitting: bool = False,
    progress: bool = True,
    metrics_rows: int | None = None,
) -> pl.Trainer:
    """The Trainer of a run (a fit when `fitting`, else a test), logging into `folder` (None: no logs, the sweep);
    a fit checkpoints into folder/checkpoints; a resumed fit keeps the first `metrics_rows` rows of metrics.csv."""
    accelerator, n = settings.devices
    run = settings.run
    callbacks, loggers = [], []
    if folder is not None:
        csv_log = MetricsCSV(folder, metrics_rows)
        tensorboard = TensorBoardLogger(str(folder.parent.parent), name=folder.parent.name, version=folder.name,
                                        default_hp_metric=False)  # fmt: skip
        loggers = [csv_log, tensorboard]
    if fitting:
        remove_stale_temporaries(folder / "checkpoints")  # left by a writer killed mid-checkpoint
        # at the end of each validation (as officially), before LastCheckpoint: last.ckpt then holds the best's state
        best = ModelCheckpoint(dirpath=folder / "checkpoints", monitor="val/the_metric", mode="max", save_top_k=1,
                               enable_version_counter=False, save_on_train_epoch_end=False)  # fmt: skip
        callbacks += [LearningRateMonitor(logging_interval="step"), ExactResume(csv_log), best, LastCheckpoint(best)]
    bar = progress and sys.stderr.isatty()  # a bar on a terminal, plain lines in a log file
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=10) if bar else PlainProgress())
    max_steps = settings.optim.max_steps
    return pl.Trainer(
        accelerator=accelerator,
        devices=n,
        num_nodes=run.num_nodes,
        # every trainable parameter gets a gradient each step (prompts are gathered from stacked banks): plain DDP;
        # multi-node runs use Lightning's standard launch environment
        strategy="ddp" if n * run.num_nodes > 1 else "auto",
        precision=precision(settings),
        max_epochs=settings.optim.max_epoch if max_steps is None else 1000,
        max_steps=-1 if max_steps is None else max_steps,
        accumulate_grad_batches=settings.accumulation,
        val_check_interval=run.val_check_interval if fitting else None,  # (a test needs none; Lightning notes it)
        log_every_n_steps=10,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=fitting,
        enable_progress_bar=bar,
        enable_model_summary=fitting,
        fast_dev_run=run.fast_dev_run,
        benchmark=True,
        use_distributed_sampler=False,  # the datamodules shard each split themselves
        plugins=[AtomicCheckpointIO()],
    )


@contextmanager
def stops_on_sigterm() -> Iterator[None]:
    """Lightning ends a fit or test at the next batch after SIGTERM with a SystemExit of status 0: say so instead."""
    try:
        yield
    except SIGTERMException:
        raise Interrupted("SIGTERM received; the checkpoints and logs written so far are kept") from None


def fit(settings: Settings, splits: Splits) -> pl.Trainer:
    run = settings.run
    model = create_model(settings.model, run.load_path, run.vit_weights, run.finetune_first, run.trust_checkpoint)
    rows = None
    if run.resume_from:  # read once here: a corrupt, unsafe or foreign file is refused with its name before any work
        checkpoint = load_checkpoint(run.resume_from, "resume_from", run.trust_checkpoint)
        rows = check_resume(settings, model, checkpoint, run.resume_from)
        del checkpoint
    module = TaskModule(settings.config, model)
    trainer = build_trainer(settings, run_folder(settings), fitting=True, metrics_rows=rows)
    with stops_on_sigterm():
        trainer.fit(module, datamodule=MissingDataModule(splits), ckpt_path=run.resume_from,
                    weights_only=not run.trust_checkpoint)  # fmt: skip
    summary = training_summary(trainer)  # on every process: under DDP trainer.log_dir is a collective broadcast
    if trainer.is_global_zero:
        print(summary, flush=True)
    return trainer


def training_summary(trainer: pl.Trainer) -> str:
    """The run folder, the best checkpoint with its val/the_metric, and last.ckpt."""
    best, last = trainer.checkpoint_callbacks
    score = "n/a" if best.best_model_score is None else f"{float(best.best_model_score):.4f}"
    return "\n".join([
        f"run folder:      {trainer.log_dir}",
        f"best checkpoint: {best.best_model_path or 'none (no validation ran)'} (val/the_metric {score})",
        f"last checkpoint: {last.last_model_path or 'none'}",
    ])  # fmt: skip


def check_log_dir(settings: Settings) -> None:
    """log_dir must be a folder this process can write in, or one it can create (its nearest existing parent is a
    writable folder): checked before a run starts, creating nothing."""
    given = settings.run.log_dir
    probe = Path(given).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"config log_dir={given!r}: cannot create it ({str(probe)!r} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"config log_dir={given!r}: cannot create it ({str(probe)!r} is not writable)")


def train(config: dict) -> pl.Trainer:
    """Check everything (configuration, files, machine, data), then fit."""
    settings = Settings.from_config(config)
    check_files(settings)
    check_log_dir(settings)
    check_machine(settings)
    splits = Splits(settings.data)
    splits.check()  # labels, empty splits: before anything is written
    pl.seed_everything(settings.run.seed)  # before the model: seeded runs draw the official initial prompts
    return fit(settings, splits)
