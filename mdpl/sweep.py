"""Evaluate checkpoints over a grid of missing types x ratios: `python run.py sweep with <task config> ...`.

Each checkpoint is built once (from its own saved config where it has one, data settings from the command
line) and tested on every (type, ratio); the test split's missing table for each point is the one a
test_only run with test_type/test_ratio would use. Writes sweep.csv, sweep.md and sweep.png into
{log_dir}/{exp_name}_seed{seed}_sweep/version_N.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytorch_lightning as pl

from mdpl.settings import Settings, check_files, check_sweep, resolve
from mdpl.tasks import TASKS
from mdpl.train import build_trainer, new_version_dir
from mdpl.writers.common import atomic_path


def series_names(paths: list[str], methods: list[str]) -> list[str]:
    """One label per checkpoint: its prompt_method, plus (when methods repeat) the shortest path suffix that
    tells the checkpoints of that method apart: `mdpl:runA/.../last` rather than two `mdpl:last`."""
    resolved = [os.path.realpath(p) for p in paths]
    dupes = sorted({p for p in paths if resolved.count(os.path.realpath(p)) > 1})
    if dupes:
        raise ValueError(f"config sweep_paths lists the same checkpoint more than once: {dupes}")
    if len(set(methods)) == len(methods):
        return list(methods)
    parts = [Path(os.path.splitext(r)[0]).parts for r in resolved]
    names = []
    for i, (method, own) in enumerate(zip(methods, parts)):
        others = [q for j, q in enumerate(parts) if j != i and methods[j] == method]
        k = 1
        while any(q[-k:] == own[-k:] for q in others):
            k += 1
        names.append(method if not others else f"{method}:{'/'.join(own[-k:])}")
    return names


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_outputs(rows: list[dict], out_dir: Path, metric_title: str) -> str:
    """sweep.csv (every metric), sweep.md (the_metric x 100 per ratio and line) and sweep.png; returns the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(out_dir / "sweep.csv", buf.getvalue().encode())

    labels = list(dict.fromkeys(r["label"] for r in rows))
    ratios = sorted({r["missing_ratio"] for r in rows})
    value = {(r["label"], r["missing_ratio"]): r["the_metric"] * 100 for r in rows}
    lines = [f"{metric_title} (%) on the test split, by missing ratio", "",
             "| missing ratio | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for ratio in ratios:
        cells = [f"{value[(lab, ratio)]:.2f}" if (lab, ratio) in value else "" for lab in labels]
        lines.append(f"| {ratio:g} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    _write_atomic(out_dir / "sweep.md", table.encode())

    fig, ax = plt.subplots(figsize=(6, 4))
    for lab in labels:
        xs = [r for r in ratios if (lab, r) in value]
        ax.plot(xs, [value[(lab, r)] for r in xs], marker="o", label=lab)
    ax.set_xlabel("missing ratio")
    ax.set_ylabel(f"{metric_title} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    _write_atomic(out_dir / "sweep.png", png.getvalue())
    return table


def sweep(config: dict, command_line: set[str] = frozenset()) -> Path:
    """Run the grid; returns the output folder. `command_line`: keys the user set explicitly (see train.main)."""
    from mdpl.datamodules import build_datamodule
    from mdpl.modules import TaskModule, model_for_checkpoint

    config = {**resolve(config), "test_only": False, "test_exp_name": None, "resume_from": None}
    paths, types, ratios = check_sweep(config)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config sweep_paths / load_path: checkpoint {path!r} not found")
    runs = []  # all models first, so a wrong checkpoint fails before any evaluation
    for path in paths:
        runs.append(model_for_checkpoint(path, config, command_line, "sweep_paths"))
    base = runs[0][0]
    check_files(Settings.from_config({**base.config, "load_path": ""}))
    names = series_names(paths, [s.model.prompt_method for s, _ in runs])

    trainer = build_trainer(base, logger=False, checkpoints=False, progress=False)
    rows = []
    for (settings, model), name in zip(runs, names):
        module = TaskModule(settings.config, model)
        for missing_type in types:
            for ratio in ratios:
                point = Settings.from_config({**settings.config, "test_type": missing_type, "test_ratio": ratio})
                pl.seed_everything(point.run.seed, verbose=False)  # the same tables as test_only would draw
                [metrics] = trainer.test(module, datamodule=build_datamodule(point), verbose=False)
                row = {"checkpoint": point.run.load_path, "prompt_method": point.model.prompt_method,
                       "label": f"{name}/{missing_type}", "missing_type": missing_type,
                       "missing_ratio": float(ratio), "the_metric": metrics["test/the_metric"]}
                row.update({k: v for k, v in sorted(metrics.items()) if k != "test/the_metric"})
                rows.append(row)
                if trainer.is_global_zero:
                    print(f"sweep {row['label']} ratio {ratio:g}: the_metric {row['the_metric'] * 100:.2f}", flush=True)

    out_dir = Path(base.run.log_dir) / f"{base.run.exp_name}_seed{base.run.seed}_sweep"
    if trainer.is_global_zero:
        out_dir = new_version_dir(out_dir)
        title = " + ".join(f"{t} {TASKS[t].the_metric}" for t in base.model.tasks)
        print(write_outputs(rows, out_dir, title))
        print(f"sweep outputs: {out_dir}/sweep.csv, sweep.md, sweep.png")
    return out_dir
