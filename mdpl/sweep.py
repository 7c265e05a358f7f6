"""Evaluate checkpoints over a grid of missing types x ratios: `python run.py sweep with <task config> ...`.

Each checkpoint is built once (from its own saved config where it has one, data settings from the command
line) and tested on every (type, ratio); the test split's missing table for each point is the one a
test_only run with test_type/test_ratio would use. All points of (up to MODELS_PER_PASS) checkpoints are
evaluated in one pass over the test split (mdpl.sweep_loader: each image decoded once, one loader, the models
kept on the device), with exactly the metrics of a test_only run at each point; where that pass cannot be exact
(random test transforms, several processes) each point is tested with Lightning instead, with a note.

Checkpoints form groups (the lines of the outputs), averaged point by point: `sweep_groups` names each
checkpoint's group; empty, checkpoints whose saved training recipe (model, optimiser and training-data keys)
is the same apart from `seed` form one group (seed replicates), every other checkpoint is its own group.

Writes into {log_dir}/{exp_name}_seed{seed}_sweep/version_N:
- sweep.csv: every metric per checkpoint, type and ratio, with its group, the test sample count and the
  effective missing rate (share of test samples whose missing code is not 0);
- sweep_summary.csv: per group, type and ratio the_metric's mean and std over the group's checkpoints;
- sweep.md: the_metric in % (mean ± std) per ratio and line, each line's average over the ratio grid, the
  groups' checkpoints and (MM-IMDb) the effective missing rates;
- sweep.png: `plot_sweep`'s figure; config.json: the resolved config and the checkpoints with their groups.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytorch_lightning as pl

from mdpl.settings import MODEL_KEYS, ConfigError, OptimConfig, Settings, check_files, check_sweep, resolve
from mdpl.tasks import TASKS
from mdpl.train import build_trainer, new_version_dir, path_stem
from mdpl.writers.common import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# one line style and marker per missing type in sweep.png
TYPE_STYLES = {"text": ("-", "o"), "image": ("--", "s"), "both": (":", "^")}
# saved-config keys that define how a checkpoint was trained (besides the seed): equal recipes = seed replicates
RECIPE_KEYS = (
    MODEL_KEYS
    + tuple(f.name for f in fields(OptimConfig))
    + (
        "datasets",
        "both_ratio",
        "table_draw",
        "simulate_missing",
        "mmimdb_one_plot",
        "train_transform_keys",
        "finetune_first",
    )
)


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


def check_groups(groups: object, paths: list[str]) -> list[str]:
    """sweep_groups checked against the checkpoint list: [] or one non-empty name per checkpoint."""
    if groups is None or (isinstance(groups, (list, tuple)) and not groups):
        return []
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, str) and g.strip() for g in groups):
        raise ConfigError(
            f"config sweep_groups={groups!r}: expected [] (group by saved config without the seed) "
            "or a list of non-empty group names, one per sweep_paths entry"
        )
    if len(groups) != len(paths):
        raise ConfigError(
            f"config sweep_groups has {len(groups)} entries but sweep_paths (or load_path) lists "
            f"{len(paths)} checkpoints: give one group name per checkpoint, or [] to group by "
            "saved config"
        )
    return [g.strip() for g in groups]


def training_recipe(saved: dict) -> dict | None:
    """The keys of a saved config that define how its checkpoint was trained, seed and paths excluded (the
    pre-trained weights by file stem); None for a checkpoint without a saved config (official ones)."""
    if not saved:
        return None
    recipe = {k: saved[k] for k in RECIPE_KEYS if k in saved}
    for table in ("missing_ratio", "missing_type"):
        if isinstance(saved.get(table), dict):
            recipe[f"{table}.train"] = saved[table].get("train")
    for key in ("load_path", "vit_weights"):
        recipe[key] = path_stem(str(saved.get(key) or ""))
    return recipe


def _short(value: object) -> str:
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)


def group_names(names: list[str], methods: list[str], saved: list[dict], given: list[str]) -> list[str]:
    """One group label per checkpoint. `given` (sweep_groups) wins. Otherwise checkpoints with equal training
    recipes (`training_recipe`) and distinct seeds form one group, labelled by their prompt_method plus, when
    another group has that method too, the recipe keys that differ (`mdpl (max_epoch=1)`); every other
    checkpoint (no saved config, a repeated seed such as best and last of one run) keeps its own `names` label."""
    if given:
        return list(given)
    recipes = [training_recipe(s) for s in saved]
    keys = [json.dumps(r, sort_keys=True, default=str) if r is not None else None for r in recipes]
    members: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key is not None:
            members.setdefault(key, []).append(i)
    multi = []
    for idx in members.values():
        seeds = [saved[i].get("seed") for i in idx]
        if len(idx) > 1 and len(set(map(str, seeds))) == len(seeds):
            multi.append(idx)
    labels = list(names)
    grouped = {i for idx in multi for i in idx}
    for idx in multi:
        method = methods[idx[0]]
        rivals = [g for g in multi if g is not idx and methods[g[0]] == method]
        alone = [i for i in range(len(names)) if i not in grouped and methods[i] == method]
        label = method
        if rivals or alone:
            own = recipes[idx[0]]
            diff = sorted(
                {k for g in rivals for k in set(own) | set(recipes[g[0]]) if own.get(k) != recipes[g[0]].get(k)}
            )
            label = (
                f"{method} ({', '.join(f'{k}={_short(own.get(k))}' for k in diff)})"
                if diff
                else f"{method} ({len(idx)} seeds)"
            )
        for i in idx:
            labels[i] = label
    # two different groups never share a label
    seen: dict[str, tuple] = {}
    for i, label in enumerate(labels):
        owner = tuple(next((g for g in multi if i in g), (i,)))
        base, k = label, 2
        while label in seen and seen[label] != owner:
            label, k = f"{base} #{k}", k + 1
        seen[label] = owner
        labels[i] = label
    return labels


def effective_missing(dataset) -> tuple[float, int]:
    """(share of samples whose missing code is not 0, number of samples) of a test dataset. MM-IMDb draws its
    missing table per movie (Arrow row) but has one sample per plot, so this differs from the nominal ratio."""
    parts = getattr(dataset, "datasets", [dataset])  # ConcatDataset of several datasets
    missing = total = 0
    for part in parts:
        total += len(part.index)
        missing += sum(1 for row, _ in part.index if part.missing[row] != 0)
    return (missing / total if total else float("nan")), total


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _csv(rows: list[dict]) -> bytes:
    fields_ = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields_, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _group_of(row: dict) -> str:
    return row.get("group") or row["label"].rsplit("/", 1)[0]


def summarise(rows: list[dict]) -> list[dict]:
    """Per (group, missing type, ratio), in first-appearance order: the_metric's mean and std over the group's
    checkpoints (fractions, like sweep.csv), with the effective missing rate and test sample count."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault((_group_of(row), row["missing_type"], float(row["missing_ratio"])), []).append(row)
    out = []
    types = list(dict.fromkeys(r["missing_type"] for r in rows))
    for group in dict.fromkeys(k[0] for k in cells):
        for key in sorted((k for k in cells if k[0] == group), key=lambda k: (types.index(k[1]), k[2])):
            members = cells[key]
            mean, std = _mean_std([float(r["the_metric"]) for r in members])
            rates = [
                float(r["effective_missing_rate"])
                for r in members
                if r.get("effective_missing_rate") != "" and r.get("effective_missing_rate") is not None
            ]
            samples = sorted({int(r["test_samples"]) for r in members if r.get("test_samples") not in (None, "")})
            out.append(
                {
                    "group": group,
                    "missing_type": key[1],
                    "missing_ratio": key[2],
                    "n": len(members),
                    "the_metric_mean": mean,
                    "the_metric_std": std,
                    "effective_missing_rate": sum(rates) / len(rates) if rates else "",
                    "test_samples": samples[0] if len(samples) == 1 else "/".join(map(str, samples)),
                    "checkpoints": ";".join(dict.fromkeys(r["checkpoint"] for r in members)),
                }
            )
    return out


def line_averages(rows: list[dict]) -> dict[tuple[str, str], tuple[float, float, int]]:
    """(group, type) -> (mean, std, n) over the group's checkpoints of each checkpoint's the_metric averaged
    over the ratio grid (the paper's "average performance")."""
    per_ckpt: dict[tuple, list[float]] = {}
    for row in rows:
        per_ckpt.setdefault((_group_of(row), row["missing_type"], row["checkpoint"]), []).append(
            float(row["the_metric"])
        )
    per_line: dict[tuple, list[float]] = {}
    for (group, missing_type, _), values in per_ckpt.items():
        per_line.setdefault((group, missing_type), []).append(sum(values) / len(values))
    return {k: (*_mean_std(v), len(v)) for k, v in per_line.items()}


def _samples_text(summary: list[dict]) -> str:
    counts = list(dict.fromkeys(str(s["test_samples"]) for s in summary if s.get("test_samples") != ""))
    return "/".join(counts) if counts else "?"


def plot_sweep(summary: list[dict], metric_title: str) -> Figure:
    """the_metric (%) against the missing ratio: one colour per group, one line style and marker per missing
    type, the group mean with a mean ± std band for groups of several checkpoints. Lines are shifted by small
    x offsets (and drawn translucent with differing markers) so that none hides another."""
    import matplotlib
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys(s["group"] for s in summary))
    types = list(dict.fromkeys(s["missing_type"] for s in summary))
    ratios = sorted({s["missing_ratio"] for s in summary})
    palette = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"].colors
    gap = min((b - a for a, b in zip(ratios, ratios[1:])), default=1.0)
    lines = [(g, t) for g in groups for t in types]
    span = (ratios[-1] - ratios[0]) or 1.0
    step = min(0.3 * gap, 0.04 * span) / max(len(lines) - 1, 1)  # offsets within 30% of the grid step, 4% of x

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    for i, (group, missing_type) in enumerate(lines):
        points = sorted(
            (s for s in summary if s["group"] == group and s["missing_type"] == missing_type),
            key=lambda s: s["missing_ratio"],
        )
        if not points:
            continue
        color = palette[groups.index(group) % len(palette)]
        style, marker = TYPE_STYLES.get(missing_type, ("-.", "D"))
        shift = (i - (len(lines) - 1) / 2) * step
        xs = [s["missing_ratio"] + shift for s in points]
        mean = [s["the_metric_mean"] * 100 for s in points]
        std = [s["the_metric_std"] * 100 for s in points]
        n = max(s["n"] for s in points)
        label = f"{group}, {missing_type} missing" + (f" (mean ± std of {n})" if n > 1 else "")
        k = types.index(missing_type)  # later types: smaller, alternately hollow markers
        ax.plot(
            xs,
            mean,
            linestyle=style,
            marker=marker,
            color=color,
            alpha=0.85,
            markersize=6.5 - k % 3,
            markerfacecolor="none" if k % 2 else color,
            label=label,
        )
        if n > 1:
            low, high = [max(m - s, 0) for m, s in zip(mean, std)], [min(m + s, 100) for m, s in zip(mean, std)]
            ax.fill_between(xs, low, high, color=color, alpha=0.12, linewidth=0)
    if len(ratios) <= 12:
        ax.set_xticks(ratios)
    ax.set_xlabel("missing ratio")
    ax.set_ylabel(f"{metric_title} (%)")
    ax.set_title(f"{metric_title} on the test split ({_samples_text(summary)} test samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(rows: list[dict], summary: list[dict], metric_title: str, tasks: tuple[str, ...] = ()) -> str:
    """sweep.md: the_metric in % (mean ± std over each line's checkpoints) per ratio, then each line's
    average over the ratio grid, the groups and (MM-IMDb) the effective missing rates."""
    groups = list(dict.fromkeys(s["group"] for s in summary))
    types = list(dict.fromkeys(s["missing_type"] for s in summary))
    ratios = sorted({s["missing_ratio"] for s in summary})
    cols = [(g, t) for g in groups for t in types if any(s["group"] == g and s["missing_type"] == t for s in summary)]
    cell = {(s["group"], s["missing_type"], s["missing_ratio"]): s for s in summary}
    lines = [
        f"{metric_title} (%) on the test split ({_samples_text(summary)} test samples), by missing ratio: "
        "mean ± std over each line's checkpoints (sample std; 0 for one checkpoint)",
        "",
        "| missing ratio | " + " | ".join(_cell(f"{g}/{t}") for g, t in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for ratio in ratios:
        cells = []
        for g, t in cols:
            s = cell.get((g, t, ratio))
            cells.append(f"{s['the_metric_mean'] * 100:.2f} ± {s['the_metric_std'] * 100:.2f}" if s else "")
        lines.append(f"| {ratio:g} | " + " | ".join(cells) + " |")
    avg = line_averages(rows)
    lines.append("| average | " + " | ".join(f"{avg[c][0] * 100:.2f} ± {avg[c][1] * 100:.2f}" for c in cols) + " |")
    lines += [
        "",
        f"average: each line's {metric_title} averaged over the {len(ratios)} missing ratios "
        "(average performance), mean ± std over its checkpoints.",
        "",
        "Lines (group: checkpoints):",
        "",
    ]
    for g in groups:
        ckpts = list(dict.fromkeys(r["checkpoint"] for r in rows if _group_of(r) == g))
        own = [r for r in rows if _group_of(r) == g and r.get("seed") not in ("", None)]
        seeds = list(dict.fromkeys(str(r["seed"]) for r in own))
        seed_text = f", seeds {', '.join(seeds)}" if seeds and len(ckpts) > 1 else ""
        lines.append(
            f"- {_cell(g)} ({len(ckpts)} checkpoint{'s' * (len(ckpts) > 1)}{seed_text}): "
            + ", ".join(f"`{c}`" for c in ckpts)
        )
    if "mmimdb" in tasks:
        rate = {}
        for s in summary:
            if s["effective_missing_rate"] != "":
                rate.setdefault((s["missing_type"], s["missing_ratio"]), s["effective_missing_rate"])
        lines += [
            "",
            "Effective missing rate (% of test samples missing a modality): MM-IMDb's missing table is "
            "drawn per movie, but each plot is a sample.",
            "",
            "| missing ratio | " + " | ".join(f"{t} missing" for t in types) + " |",
            "|---|" + "---|" * len(types),
        ]
        for ratio in ratios:
            values = [f"{rate[(t, ratio)] * 100:.1f}" if (t, ratio) in rate else "" for t in types]
            lines.append(f"| {ratio:g} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(
    rows: list[dict], out_dir: Path, metric_title: str, tasks: tuple[str, ...] = (), record: dict | None = None
) -> str:
    """sweep.csv (every metric), sweep_summary.csv, sweep.md, sweep.png and (given `record`) config.json, each
    written atomically into out_dir; returns the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    _write_atomic(out_dir / "sweep.csv", _csv(rows))
    _write_atomic(out_dir / "sweep_summary.csv", _csv(summary))
    table = markdown(rows, summary, metric_title, tuple(tasks))
    _write_atomic(out_dir / "sweep.md", table.encode())
    fig = plot_sweep(summary, metric_title)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    _write_atomic(out_dir / "sweep.png", png.getvalue())
    if record is not None:
        _write_atomic(out_dir / "config.json", (json.dumps(record, indent=2, default=str) + "\n").encode())
    return table


def read_rows(path: Path) -> list[dict]:
    """sweep.csv back as rows, numbers as floats (e.g. to redraw: plot_sweep(summarise(rows), title))."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if key not in ("checkpoint", "prompt_method", "label", "missing_type", "group", "seed") and value != "":
                try:
                    row[key] = float(value)
                except ValueError:
                    pass
    return rows


def _single_pass_obstacle(settings: Settings) -> str | None:
    from mdpl.sweep_loader import obstacle
    from mdpl.transforms import keys_to_transforms

    transforms = keys_to_transforms(list(settings.data.val_transform_keys), settings.model.image_size)
    return obstacle(settings, any(t.random for t in transforms))


def _per_point(runs: list, types: list[str], ratios: list[float], zero: dict) -> Iterator[tuple[dict, float, int]]:
    """(trainer.test's metrics, effective missing rate, test samples) of each checkpoint x type x ratio, in that
    order: a new datamodule and a Lightning test per point (zero["rank"]: whether this process is rank 0)."""
    from mdpl.datamodules import build_datamodule
    from mdpl.modules import TaskModule

    trainer = build_trainer(runs[0][0], logger=False, checkpoints=False, progress=False)
    for settings, model in runs:
        module = TaskModule(settings.config, model)
        for missing_type in types:
            for ratio in ratios:
                point = Settings.from_config({**settings.config, "test_type": missing_type, "test_ratio": ratio})
                pl.seed_everything(point.run.seed, verbose=False)  # the same tables as test_only would draw
                datamodule = build_datamodule(point)
                [metrics] = trainer.test(module, datamodule=datamodule, verbose=False)
                zero["rank"] = trainer.is_global_zero
                yield metrics, *effective_missing(datamodule.datasets["test"])


# checkpoints evaluated together in one pass over the test split (all their models on the device at once)
MODELS_PER_PASS = 8


def _loader_key(settings: Settings) -> str:
    """What shapes a checkpoint's test batches besides the missing tables: checkpoints with equal keys share
    one pass over the test split."""
    data = {k: v for k, v in asdict(settings.data).items() if k not in ("missing_ratio", "missing_type")}
    m = settings.model
    labels = {t: m.num_classes(t) for t in m.tasks}
    return json.dumps([data, m.image_size, m.max_text_len, m.tokenizer, labels], sort_keys=True, default=str)


def _single_pass(runs: list, types: list[str], ratios: list[float]) -> Iterator[tuple[dict, float, int]]:
    """As `_per_point`, from one pass over the test split for all the points of up to MODELS_PER_PASS
    checkpoints (mdpl.sweep_loader): same batches, same RNG stream per point, so the same metrics."""
    import torch

    from mdpl.datasets import SPLITS, build_dataset, missing_table, read_arrow
    from mdpl.modules import TaskModule
    from mdpl.sweep_loader import GridPoint, GridTestSet, device_of, evaluate_grid
    from mdpl.tasks import task_of_dataset

    device = device_of(runs[0][0])
    counts: dict[tuple, int] = {}

    def rows(point: Settings, split: str, name: str) -> int:
        path = Path(point.data.data_root) / f"{task_of_dataset(name).arrow_name(split)}.arrow"
        if (path, split) not in counts:
            counts[path, split] = read_arrow(path).num_rows
        return counts[path, split]

    # every point's tables in the order a per-point sweep draws them: seed, then each dataset's train, val and
    # test tables (as MissingDataModule.prepare_data; a drawn table is saved, so later points load it)
    todo = []  # (run index, point settings, test tables per dataset, torch CPU RNG state, CUDA RNG state)
    for i, (settings, _) in enumerate(runs):
        for missing_type in types:
            for ratio in ratios:
                point = Settings.from_config({**settings.config, "test_type": missing_type, "test_ratio": ratio})
                pl.seed_everything(point.run.seed, verbose=False)
                tests = []
                for name in point.data.datasets:
                    for split in SPLITS:
                        table = missing_table(point, split, name, rows(point, split, name))
                        if split == "test":
                            tests.append(table.long())
                # trainer.test's loader draws its workers' base seed when its iterator starts, before any forward
                torch.empty((), dtype=torch.int64).random_()
                cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
                todo.append((i, point, tests, torch.get_rng_state(), cuda))

    groups: dict[str, list[int]] = {}
    for i, (settings, _) in enumerate(runs):
        groups.setdefault(_loader_key(settings), []).append(i)
    results: dict[int, tuple] = {}
    for members in groups.values():
        for start in range(0, len(members), MODELS_PER_PASS):
            chunk = members[start : start + MODELS_PER_PASS]
            first = runs[chunk[0]][0]
            mine = [k for k, t in enumerate(todo) if t[0] in chunk]
            parts = [build_dataset(todo[mine[0]][1], "test", name) for name in first.data.datasets]
            tables: dict[bytes, int] = {}  # distinct test tables (points of several checkpoints share theirs)
            distinct, points = [], []
            for k in mine:
                i, _, tests, cpu, cuda = todo[k]
                key = b"|".join(t.numpy().tobytes() for t in tests)
                if key not in tables:
                    tables[key] = len(distinct)
                    distinct.append(tests)
                points.append(GridPoint(chunk.index(i), tables[key], cpu, cuda))
            modules = [TaskModule(runs[i][0].config, runs[i][1]) for i in chunk]
            metrics = evaluate_grid(first, modules, GridTestSet(parts, distinct), points)
            for k, values in zip(mine, metrics):
                codes = [SimpleNamespace(index=part.index, missing=t.tolist()) for part, t in zip(parts, todo[k][2])]
                results[k] = (values, *effective_missing(SimpleNamespace(datasets=codes)))
            for module in modules:
                module.cpu()
    for k in range(len(todo)):
        yield results.pop(k)


def sweep(config: dict, command_line: set[str] = frozenset(), fast: bool = True) -> Path:
    """Run the grid; returns the output folder. `command_line`: keys the user set explicitly (see train.main).

    fast (the default): all points of a checkpoint from one pass over the test split (mdpl.sweep_loader), with
    the metrics a per-point Lightning test gives, which runs instead (with a note) where that pass cannot be
    exact (random test transforms, several processes); fast=False: a Lightning test per point."""
    from mdpl.modules import weights
    from mdpl.modules.factory import model_from_checkpoint

    config = {**resolve(config), "test_only": False, "test_exp_name": None, "resume_from": None}
    paths, types, ratios = check_sweep(config)
    given = check_groups(config.get("sweep_groups"), paths)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config sweep_paths / load_path: checkpoint {path!r} not found")
    trust = bool(config.get("trust_checkpoint"))
    runs, saved = [], []  # all models first, so a wrong checkpoint fails before any evaluation
    for path in paths:  # each file read once: its weights and its saved config (seed, training recipe)
        sd, own = weights.read_checkpoint(path, "sweep_paths", trust)
        runs.append(model_from_checkpoint(sd, own, path, config, command_line, "sweep_paths"))
        saved.append(own)
    base = runs[0][0]
    check_files(Settings.from_config({**base.config, "load_path": ""}))
    methods = [s.model.prompt_method for s, _ in runs]
    names = series_names(paths, methods)
    groups = group_names(names, methods, saved, given)

    reasons = [_single_pass_obstacle(settings) for settings, _ in runs]
    reason = next((r for r in reasons if r), None)
    if fast and reason:
        print(f"sweep: testing each point with Lightning, not in one pass ({reason})", flush=True)
    zero = {"rank": True}  # False on the processes other than rank 0 of a multi-process Lightning test
    points = _single_pass(runs, types, ratios) if fast and not reason else _per_point(runs, types, ratios, zero)
    rows = []
    for (settings, _), name, group, own in zip(runs, names, groups, saved):
        for missing_type in types:
            for ratio in ratios:
                metrics, rate, samples = next(points)
                row = {
                    "checkpoint": settings.run.load_path,
                    "prompt_method": settings.model.prompt_method,
                    "label": f"{name}/{missing_type}",
                    "missing_type": missing_type,
                    "missing_ratio": float(ratio),
                    "the_metric": metrics["test/the_metric"],
                    "group": group,
                    "seed": own.get("seed", ""),
                    "effective_missing_rate": rate,
                    "test_samples": samples,
                }
                row.update({k: v for k, v in sorted(metrics.items()) if k != "test/the_metric"})
                rows.append(row)
                if zero["rank"]:
                    print(
                        f"sweep {group if group == name else f'{group} ({name})'}, {missing_type} missing, "
                        f"ratio {ratio:g}: the_metric "
                        f"{row['the_metric'] * 100:.2f}",
                        flush=True,
                    )

    out_dir = Path(base.run.log_dir) / f"{base.run.exp_name}_seed{base.run.seed}_sweep"
    if zero["rank"]:
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
        print(f"sweep outputs: {out_dir}/sweep.csv, sweep_summary.csv, sweep.md, sweep.png, config.json")
    return out_dir
