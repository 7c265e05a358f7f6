"""The one evaluation path: models at missing settings (grid points), all from one pass over the test split, as a
Lightning test run. `test_only` is its one-point case; the sweep (mdpl.sweep) its many-point case.

Each test sample is read (its image decoded and transformed) once, with its missing code in the test table of
every point. Each batch becomes each point's batch on the device through the one substitution
(mdpl.data.missing.apply_missing); every point has its own metrics and its own torch.Generator for the random
numbers a forward draws (ViLT's patch_order="random"), seeded with the run seed (plus the process rank). Being a
Lightning test, it runs on several devices and nodes: each process takes every world_size-th sample (no sample
repeated, unlike a padded DistributedSampler), and torchmetrics sums the counts, so several processes give the
single process's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Sampler

from mdpl.data.collate import Collator
from mdpl.data.datasets import Splits
from mdpl.data.missing import apply_missing
from mdpl.data.tokenizers import TextTokenizer
from mdpl.model.factory import model_from_state_dict
from mdpl.model.model import PromptedModel
from mdpl.model.weights import prompt_method_of, read_checkpoint, to_file_names
from mdpl.train.datamodule import loader
from mdpl.train.metrics import TaskMetrics
from mdpl.train.module import task_losses
from mdpl.train.records import append_records, check_records
from mdpl.train.settings import Settings, check_files, evaluation_config
from mdpl.train.trainer import build_trainer, check_log_dir, check_machine, run_folder, stops_on_sigterm


@dataclass
class Point:
    """One evaluation: model `model` at (missing_type, ratio), reading test table `table`."""

    model: int
    missing_type: str
    ratio: float
    table: int


class Shard(Sampler):
    """This process's samples: every `replicas`-th, from `rank`; none repeated, none padded."""

    def __init__(self, n: int, replicas: int, rank: int) -> None:
        self.n, self.replicas, self.rank = n, replicas, rank

    def __iter__(self):
        return iter(range(self.rank, self.n, self.replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.replicas))


class GridData(pl.LightningDataModule):
    """The test split of every configured dataset (concatenated in order), with several missing tables."""

    def __init__(self, splits: Splits, tables: list[dict[str, Tensor]]) -> None:
        """tables[t][dataset]: the t-th distinct test table of each dataset."""
        super().__init__()
        self.splits = splits
        parts = [splits.dataset("test", d, [t[d] for t in tables]) for d in splits.cfg.datasets]
        self.parts, self.dataset = parts, parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def missing_share(self, table: int) -> tuple[float, int]:
        """(share of test samples missing a modality in `table`, test samples)."""
        samples = sum(len(p) for p in self.parts)
        missing = sum(p.missing_share(table) * len(p) for p in self.parts)
        return (missing / samples if samples else float("nan")), samples

    def test_dataloader(self):
        cfg, trainer = self.splits.cfg, self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        collate = Collator(TextTokenizer(cfg.tokenizer, cfg.max_text_len), substitute=False)
        return loader(self.dataset, cfg, Shard(len(self.dataset), replicas, rank), collate)


class Evaluator(pl.LightningModule):
    def __init__(self, models: list[PromptedModel], points: list[Point], seed: int) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.points, self.seed = points, seed
        self.point_metrics = nn.ModuleList(
            [TaskMetrics({t: m.cfg.num_classes(t) for t in m.cfg.tasks}) for m in (models[p.model] for p in points)]
        )
        self.results: list[dict[str, float]] = []
        self.generators: list[torch.Generator] = []

    def on_test_epoch_start(self) -> None:
        seed = self.seed + self.global_rank
        self.generators = [torch.Generator(device=self.device).manual_seed(seed) for _ in self.points]

    def test_step(self, batch: dict, batch_idx: int) -> None:
        for table in sorted({p.table for p in self.points}):
            own = apply_missing(batch, batch["codes"][table])
            for i, point in enumerate(self.points):
                if point.table == table:
                    model = self.models[point.model]
                    out = task_losses(model.cfg.tasks, model(own, generator=self.generators[i]), own["label"])
                    self.point_metrics[i].update("test", out)

    def on_test_epoch_end(self) -> None:
        self.results = []
        for metrics in self.point_metrics:  # on every process: compute() syncs the counts
            self.results.append({k: float(v) for k, v in metrics.compute("test").items()})
            metrics.reset("test")
        if len(self.points) == 1:  # test_only: its loggers record the metrics
            self.log_dict(self.results[0], sync_dist=True)


def evaluate(
    settings: Settings,
    models: list[PromptedModel],
    grid: list[tuple[str, float]],
    splits: Splits,
    trainer: pl.Trainer,
) -> list[list[tuple[dict[str, float], float, int]]]:
    """For each model, for each (missing_type, ratio) of `grid`: (test metrics, effective missing rate, test
    samples). Each point's test table is the one a test_only run at that setting draws (`Splits.tables_for`)."""
    distinct, index, tables = [], {}, {}  # points with equal test tables share one
    for missing_type, ratio in grid:
        drawn = splits.tables_for(settings.data.at(ratio, missing_type))
        test = {d: drawn[d, "test"] for d in settings.data.datasets}
        key = b"".join(t.numpy().tobytes() for t in test.values())
        if key not in index:
            index[key] = len(distinct)
            distinct.append(test)
        tables[missing_type, ratio] = index[key]
    points = [Point(m, t, r, tables[t, r]) for m in range(len(models)) for t, r in grid]
    data = GridData(splits, distinct)
    evaluator = Evaluator(models, points, settings.run.seed)
    with stops_on_sigterm():
        trainer.test(evaluator, datamodule=data, verbose=False)
    results = iter(evaluator.results)
    return [[(next(results), *data.missing_share(tables[t, r])) for t, r in grid] for _ in models]


def checkpoint_settings(
    path: str, config: dict, command_line: set[str], what: str = "load_path"
) -> tuple[Settings, dict[str, Tensor], dict]:
    """(settings with the checkpoint's model config, its state dict, its saved config), reading the file once.

    Model keys come from the checkpoint (official and DCP checkpoints: the backbone and prompt method from their
    weights); a disagreeing model key on the command line is an error (mdpl.train.settings.evaluation_config)."""
    trust = bool(config.get("trust_checkpoint"))
    sd, saved = read_checkpoint(path, what, trust)
    names, backbone, _ = to_file_names(sd)
    source = f"{what}={path!r}"
    merged, notes = evaluation_config(saved, (backbone, prompt_method_of(names, source)), config, set(command_line),
                                      source)  # fmt: skip
    for note in notes:
        print(note, flush=True)
    return Settings.from_config({**merged, "load_path": path}), sd, saved


def test_only(config: dict, command_line: set[str] = frozenset()) -> list[dict]:
    """Test load_path at the configured test setting with the model rebuilt from its own saved config; print the
    metrics and append the records line. Returns [the test metrics] (as trainer.test does)."""
    path = config["load_path"]
    settings, sd, _ = checkpoint_settings(path, config, command_line)
    check_files(settings)
    check_log_dir(settings)
    check_records(settings)
    check_machine(settings)
    splits = Splits(settings.data)
    splits.check(nonempty=("test",))
    model = model_from_state_dict(settings.model, sd, f"load_path={path!r}", settings.run.seed)
    d = settings.data
    trainer = build_trainer(settings, run_folder(settings))
    [[(values, _, _)]] = evaluate(settings, [model], [(d.missing_type["test"], d.missing_ratio["test"])], splits,
                                  trainer)  # fmt: skip
    if trainer.is_global_zero:
        print("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items())), flush=True)
        if settings.run.test_exp_name is not None:
            for written in append_records(settings, values):
                print(f"records: appended to {written}", flush=True)
    return [values]
