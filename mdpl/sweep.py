"""Evaluate checkpoints over a grid of missing types x ratios: `python run.py sweep with <task config> ...`.

Each checkpoint is built once (from its own saved config where it has one, data settings from the command
line) and tested on every (type, ratio); the test split's missing table for each point is the one a
test_only run with test_type/test_ratio would use. Writes sweep.csv, sweep.md and sweep.png into
{log_dir}/{exp_name}_seed{seed}_sweep/version_N.
"""

from __future__ import annotations

import copy
import csv
import io
import os
from pathlib import Path

import pytorch_lightning as pl

from mdpl.gadgets.metrics import THE_METRIC, active_tasks
from mdpl.modules.weights import load_checkpoint, prompt_method_of
from mdpl.train import MISSING_TYPES, build_trainer, check_config, plain
from mdpl.writers.common import atomic_path

# keys that shape the model: taken from the checkpoint's saved config so it is rebuilt as it was trained
MODEL_KEYS = (
    "prompt_method", "prompt_type", "learnt_p", "multi_layer_prompt", "gen_prompt_length", "gen_prompt_layers",
    "shared_prompt_length", "shared_prompt_layers", "mem_size", "top_k", "prompt_length", "prompt_layers",
    "masked_query", "fp32_similarity", "trim_text", "patch_order", "vit", "hidden_size", "num_heads",
    "num_layers", "mlp_ratio", "drop_rate", "image_size", "patch_size", "max_text_len", "max_image_len",
    "vocab_size", "tokenizer", "train_transform_keys", "val_transform_keys", "mmimdb_class_num",
    "hatememes_class_num", "food101_class_num",
)


def saved_config(path: str) -> dict:
    """The config a checkpoint stores in its hparams ({} if none), with its prompt_method told by its
    parameter names where the config does not record it (official MDPL and MAP checkpoints)."""
    ckpt = load_checkpoint(path, "sweep_paths / load_path")
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    config = dict(hparams.get("config", {}))
    if "prompt_method" not in config:
        config["prompt_method"] = prompt_method_of(ckpt.get("state_dict", ckpt))
    return config


def model_config(path: str, config: dict) -> dict:
    """The command-line config with the checkpoint's model keys, set up to test `path`."""
    saved = saved_config(path)
    out = copy.deepcopy(config)
    out.update({k: copy.deepcopy(saved[k]) for k in MODEL_KEYS if k in saved})
    out.update(load_path=path, test_only=True, test_exp_name=None, resume_from=None)
    return out


def _series_names(configs: list[dict]) -> list[str]:
    """Line label prefix per checkpoint: its prompt_method, plus the file stem when methods repeat."""
    methods = [c["prompt_method"] for c in configs]
    unique = len(set(methods)) == len(methods)
    return [m if unique else f"{m}:{Path(c['load_path']).stem}" for m, c in zip(methods, configs)]


def _next_version(folder: Path) -> Path:
    n = 0
    while (folder / f"version_{n}").exists():
        n += 1
    return folder / f"version_{n}"


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


def sweep(_config: dict) -> Path:
    """Run the grid; returns the output folder."""
    from mdpl.datamodules import build_datamodule
    from mdpl.modules import MemPromptTransformer

    config = plain(_config)
    paths = config["sweep_paths"] or ([config["load_path"]] if config["load_path"] else [])
    if not paths:
        raise ValueError("sweep needs checkpoints: sweep_paths='[\"a.ckpt\", \"b.ckpt\"]' or load_path=a.ckpt")
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config sweep_paths / load_path: checkpoint {path!r} not found")
    bad_types = [t for t in config["sweep_types"] if t not in MISSING_TYPES]
    if bad_types or not config["sweep_types"]:
        raise ValueError(f"config sweep_types={config['sweep_types']!r}: expected a non-empty list of {MISSING_TYPES}")
    if not config["sweep_ratios"] or not all(isinstance(r, (int, float)) and 0 <= r <= 1 for r in config["sweep_ratios"]):
        raise ValueError(f"config sweep_ratios={config['sweep_ratios']!r}: expected a non-empty list of numbers in [0, 1]")
    configs = [model_config(p, config) for p in paths]
    for c in configs:
        check_config(c)
    tasks = active_tasks(config)
    models = []
    for c in configs:  # all models first, so a wrong checkpoint fails before any evaluation
        pl.seed_everything(c["seed"])
        models.append(MemPromptTransformer(c))

    trainer = build_trainer(config, logger=False, checkpoints=False, progress=False)
    rows = []
    for c, model, name in zip(configs, models, _series_names(configs)):
        for missing_type in config["sweep_types"]:
            for ratio in config["sweep_ratios"]:
                point = copy.deepcopy(c)
                point.update(test_type=missing_type, test_ratio=float(ratio))
                pl.seed_everything(point["seed"], verbose=False)  # the same tables as test_only would draw
                dm = build_datamodule(point)
                [metrics] = trainer.test(model, datamodule=dm, verbose=False)
                row = {"checkpoint": point["load_path"], "prompt_method": point["prompt_method"],
                       "label": f"{name}/{missing_type}", "missing_type": missing_type,
                       "missing_ratio": float(ratio), "the_metric": metrics["test/the_metric"]}
                row.update({k: v for k, v in sorted(metrics.items()) if k != "test/the_metric"})
                rows.append(row)
                if trainer.is_global_zero:
                    print(f"sweep {row['label']} ratio {ratio:g}: the_metric {row['the_metric'] * 100:.2f}", flush=True)

    out_dir = _next_version(Path(config["log_dir"]) / f"{config['exp_name']}_seed{config['seed']}_sweep")
    if trainer.is_global_zero:
        title = " + ".join(f"{t} {THE_METRIC[t]}" for t in tasks)
        print(write_outputs(rows, out_dir, title))
        print(f"sweep outputs: {out_dir}/sweep.csv, sweep.md, sweep.png")
    return out_dir
