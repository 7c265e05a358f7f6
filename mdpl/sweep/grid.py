"""Evaluate checkpoints over a grid of missing types x ratios: `python run.py sweep with <task config> ...`.

Each checkpoint is rebuilt from its own saved config (data settings from the command line), exactly as test_only
does, and each grid point tests it on the test table a test_only run at that test_type / test_ratio would use.
All points of up to MODELS_PER_PASS checkpoints run in one Lightning test over the test split
(mdpl.train.evaluate), so every point gets the metrics test_only gives there, on one device or several.

Checkpoints form groups (the lines of the outputs), averaged point by point (mdpl.sweep.groups). Writes into
{log_dir}/{exp_name}_seed{seed}_sweep/version_N the files of mdpl.sweep.outputs and config.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mdpl.data.datasets import Splits
from mdpl.data.tasks import TASKS
from mdpl.errors import MissingFileError
from mdpl.model.factory import model_from_state_dict
from mdpl.sweep.groups import check_groups, group_names, series_names
from mdpl.sweep.outputs import write_outputs
from mdpl.train.evaluate import checkpoint_settings, evaluate
from mdpl.train.settings import Settings, check_files, check_sweep, resolve
from mdpl.train.trainer import build_trainer, check_machine, is_launcher_process, new_version_dir

MODELS_PER_PASS = 8  # checkpoints evaluated together in one pass (all their models on the device at once)


def method_label(settings: Settings) -> str:
    """A checkpoint's method as the outputs name it: the prompt method, with "@clip" on CLIP."""
    m = settings.model
    return m.prompt_method if m.backbone == "vilt" else f"{m.prompt_method}@{m.backbone}"


def _pass_key(settings: Settings) -> str:
    """What shapes a checkpoint's test batches besides the missing tables: checkpoints with equal keys share one
    pass over the test split."""
    data = {k: v for k, v in asdict(settings.data).items() if k not in ("missing_ratio", "missing_type")}
    return json.dumps(data, sort_keys=True, default=str)


def sweep(config: dict, command_line: set[str] = frozenset()) -> Path:
    """Run the grid; returns the output folder. `command_line`: the keys the user set explicitly."""
    config = {**resolve(config), "test_only": False, "test_exp_name": None, "resume_from": None}
    paths, types, ratios = check_sweep(config)
    given = check_groups(config.get("sweep_groups"), paths)
    for path in paths:
        if not Path(path).is_file():
            raise MissingFileError(f"config sweep_paths / load_path: checkpoint {path!r} not found")
    runs, saved = [], []  # every checkpoint read and checked before any evaluation
    for path in paths:
        settings, sd, own = checkpoint_settings(path, config, command_line, "sweep_paths")
        runs.append((settings, sd))
        saved.append(own)
    base = runs[0][0]
    check_files(Settings.from_config({**base.config, "load_path": ""}))
    check_machine(base)
    methods = [method_label(s) for s, _ in runs]
    names = series_names(paths, methods)
    groups = group_names(names, methods, saved, given)
    models = [model_from_state_dict(s.model, sd, f"sweep_paths entry {s.run.load_path!r}", s.run.seed)
              for s, sd in runs]  # fmt: skip

    grid = [(t, r) for t in types for r in ratios]
    results: dict[int, list] = {}
    trainer = build_trainer(base, None, progress=False)
    passes: dict[str, list[int]] = {}
    for i, (settings, _) in enumerate(runs):
        passes.setdefault(_pass_key(settings), []).append(i)
    for members in passes.values():
        splits = Splits(runs[members[0]][0].data)
        splits.check(nonempty=("test",))
        for start in range(0, len(members), MODELS_PER_PASS):
            chunk = members[start : start + MODELS_PER_PASS]
            points = evaluate(runs[chunk[0]][0], [models[i] for i in chunk], grid, splits, trainer)
            results.update(zip(chunk, points))

    rows = []
    for i, ((settings, _), name, group, own) in enumerate(zip(runs, names, groups, saved)):
        for (missing_type, ratio), (metrics, rate, samples) in zip(grid, results[i]):
            row = {
                "checkpoint": settings.run.load_path,
                "prompt_method": settings.model.prompt_method,
                "backbone": settings.model.backbone,
                "label": f"{name}/{missing_type}",
                "missing_type": missing_type,
                "missing_ratio": float(ratio),
                "the_metric": metrics["test/the_metric"],
                "group": group,
                "seed": own.get("seed", ""),
                "effective_missing_rate": rate,
                "test_samples": samples,
                **{k: v for k, v in sorted(metrics.items()) if k != "test/the_metric"},
            }
            rows.append(row)
            if trainer.is_global_zero:
                shown = group if group == name else f"{group} ({name})"
                print(f"sweep {shown}, {missing_type} missing, ratio {ratio:g}: the_metric "
                      f"{row['the_metric'] * 100:.2f}", flush=True)  # fmt: skip

    out_dir = Path(base.run.log_dir) / f"{base.run.exp_name}_seed{base.run.seed}_sweep"
    if trainer.is_global_zero and is_launcher_process():
        out_dir = new_version_dir(out_dir)
        title = " + ".join(f"{t} {TASKS[t].the_metric}" for t in base.model.tasks)
        record = {
            "config": config,
            "sweep_types": types,
            "sweep_ratios": ratios,
            "checkpoints": [
                {"path": p, "label": n, "group": g, "prompt_method": m, "seed": s.get("seed")}
                for p, n, g, m, s in zip(paths, names, groups, methods, saved)
            ],
            "groups": {g: [p for p, h in zip(paths, groups) if h == g] for g in dict.fromkeys(groups)},
        }
        print(write_outputs(rows, out_dir, title, base.model.tasks, record))
        print(f"sweep outputs: {out_dir}/sweep.csv, sweep_summary.csv, sweep.md, sweep.png (.pdf, .svg), config.json")
    return out_dir
