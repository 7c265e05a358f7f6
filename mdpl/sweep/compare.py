"""Every method on every backbone in one comparison: `python run.py compare with <task config> ...`.

Trains each backbone x method of compare_backbones x compare_methods (a pair that cannot run, DCP on ViLT, is
skipped with a note) once per seed of compare_seeds, all on the configuration's data and missing setting, through
mdpl.train.trainer.train; then sweeps every run's best checkpoint (by val/the_metric) in one sweep
(mdpl.sweep.grid.sweep, one group per backbone x method, so each line is the mean ± std over the seeds: one table,
one plot) and writes compare.md beside the sweep outputs: each group's the_metric averaged over the sweep grid,
mean ± std over the seeds.

Folders, under {log_dir}/{exp_name}_compare/:
- {backbone}_{method}_seed{seed}_from_{load_path stem}/: one run; version_N/ as `train` writes it, and beside it
  compare.json, the run's training recipe (mdpl.sweep.groups.training_recipe and the seed), with its best
  checkpoint once its fit has finished (written whole or not at all: the marker of a finished run);
- {exp_name}_seed{seed}_sweep/version_N/: the sweep's outputs and compare.md.
Running the command again reuses every finished run, resumes an unfinished one from its last.ckpt (exactly, as
resume_from does) and trains the rest; a run folder holding another recipe than the command's is refused (use
another exp_name or log_dir). Every refusal comes before anything is written.

Per-method settings: the configuration's prompt sizes serve every method, except that DCP needs prompt_length a
multiple of 3 and prompt_layers [0 .. depth-1]: when prompt_length is not a multiple of 3 (another method's length,
such as the task configs' 16), DCP runs take its official 36 and [0..5]. DCP runs save their dynamic prompts
(dcp_dynamic_prompts="saved"; training is the same): the sweep rebuilds every checkpoint after seeding with one
seed, so the official redraw would give each seed's DCP other dynamic prompts than it was trained with. The other
methods get the DCP keys' defaults. load_path: "" (random backbones), a file when one backbone is compared, or a
dict giving each backbone its pre-trained weights.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from mdpl.data.tasks import TASKS
from mdpl.errors import ConfigError, MissingFileError, fail
from mdpl.files import write_atomic
from mdpl.model.model import BACKBONES
from mdpl.model.prompts import PROMPT_METHODS
from mdpl.sweep.grid import method_label, sweep
from mdpl.sweep.groups import training_recipe
from mdpl.sweep.outputs import line_averages, read_rows
from mdpl.train.settings import MODEL_KEYS, Settings, check_files, resolve
from mdpl.train.trainer import check_log_dir, check_machine, is_launcher_process, run_name, train

DCP_OFFICIAL = {"prompt_length": 36, "prompt_layers": [0, 1, 2, 3, 4, 5]}  # DCP's prompt length and depth
DCP_DEFAULTS = {"dcp_dynamic_prompts": "official", "dcp_masked_prompt_attention": False}  # as in mdpl.config
# keys compare sets for each run, with why: typed on the command line they would be silently overridden
PER_RUN = {
    "backbone": "each run's comes from compare_backbones",
    "prompt_method": "each run's comes from compare_methods",
    "seed": "each run's comes from compare_seeds",
    "sweep_paths": "the sweep reads the runs' best checkpoints",
    "sweep_groups": "the sweep groups the runs by backbone x method",
    "dcp_dynamic_prompts": 'DCP runs save them ("saved") so that the sweep evaluates each seed with its own',
    "resume_from": "an unfinished run resumes from its own last.ckpt",
    "test_only": "every run is trained",
}
MARKER = "compare.json"


@dataclass(frozen=True)
class Run:
    group: str  # the sweep's line: the method, "@clip" on CLIP (mdpl.sweep.grid.method_label)
    seed: int
    settings: Settings
    folder: Path  # {compare folder}/{run name}: version_N/ and the marker


def runs_on(method: str, backbone: str) -> bool:
    """Whether `method` can prompt `backbone`: DCP prompts CLIP's two towers (the settings refuse it elsewhere)."""
    return method != "dcp" or backbone == "clip"


def _names(config: dict, key: str, allowed: tuple[str, ...]) -> list[str]:
    value = config[key]
    if not isinstance(value, (list, tuple)) or not value or any(v not in allowed for v in value):
        fail(key, value, f"a non-empty list of {allowed}")
    if len(set(value)) != len(value):
        fail(key, value, f"each of {allowed} at most once")
    return list(value)


def _seeds(config: dict) -> list[int]:
    seeds = config["compare_seeds"]
    ok = isinstance(seeds, (list, tuple)) and seeds
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        fail("compare_seeds", seeds, "a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        fail("compare_seeds", seeds, "distinct seeds")
    return list(seeds)


def _load_paths(config: dict, backbones: list[str]) -> dict[str, str]:
    """Each backbone's pre-trained weights: a dict backbone -> file, or one file (or "") for all."""
    value = config["load_path"] or ""
    if isinstance(value, dict):
        if set(value) != set(backbones) or not all(isinstance(v, str) for v in value.values()):
            fail("load_path", value, f"a dict giving each of compare_backbones {backbones} its weights file (or '')")
        return dict(value)
    if not isinstance(value, str):
        fail("load_path", value, "a weights file, '' or a dict backbone -> weights file")
    if value and len(backbones) > 1:
        fail("load_path", value, f"one weights file per backbone of compare_backbones={backbones} (a ViLT file does "
                                 "not load into CLIP), e.g. load_path='{\"vilt\": \"vilt_200k_mlm_itm.ckpt\", "
                                 "\"clip\": \"ViT-B-16.pt\"}'")  # fmt: skip
    return dict.fromkeys(backbones, value)


def run_config(config: dict, backbone: str, method: str, seed: int, load_path: str, folder: Path) -> dict:
    """The configuration of one run: the command's, with its backbone, method, seed and weights, logging into the
    compare folder as {backbone}_{method}, and the per-method settings of the module docstring."""
    run = {"backbone": backbone, "prompt_method": method, "seed": seed, "load_path": load_path, "log_dir": str(folder),
           "exp_name": f"{backbone}_{method}", "resume_from": None, "test_only": False}  # fmt: skip
    c = {**config, **run}
    if method == "dcp":
        if isinstance(c["prompt_length"], int) and c["prompt_length"] % 3:  # another type: the settings refuse it
            c.update(DCP_OFFICIAL)
        c["dcp_dynamic_prompts"] = "saved"
    else:
        c.update(DCP_DEFAULTS)
    return c


def plan(config: dict, command_line: set[str] = frozenset()) -> tuple[Path, list[Run]]:
    """(the compare folder, every run to have), all checked; prints a note for each pair that cannot run."""
    for key in sorted(set(command_line) & set(PER_RUN)):
        raise ConfigError(f"config {key}={config[key]!r}: `run.py compare` sets it for each run ({PER_RUN[key]}); "
                          "drop it from the command line")  # fmt: skip
    methods = _names(config, "compare_methods", tuple(PROMPT_METHODS))
    backbones = _names(config, "compare_backbones", tuple(BACKBONES))
    seeds = _seeds(config)
    weights = _load_paths(config, backbones)
    for key in ("exp_name", "log_dir"):
        if not isinstance(config[key], str) or not config[key] or (key == "exp_name" and "/" in config[key]):
            fail(key, config[key], "a non-empty string" + (" without '/'" if key == "exp_name" else ""))
    folder = Path(config["log_dir"]) / f"{config['exp_name']}_compare"
    runs = []
    for backbone in backbones:
        for method in methods:
            if not runs_on(method, backbone):
                print(f"compare: skipping {method} on {backbone} ({method} runs on CLIP only)", flush=True)
                continue
            for seed in seeds:
                settings = Settings.from_config(run_config(config, backbone, method, seed, weights[backbone], folder))
                runs.append(Run(method_label(settings), seed, settings, folder / run_name(settings)))
    if not runs:
        fail("compare_methods", methods, f"at least one method that runs on compare_backbones={backbones}")
    return folder, runs


def _recipe(run: Run) -> dict:
    """What makes two runs the same training: the sweep's recipe keys and the seed, as JSON reads them back."""
    return json.loads(json.dumps({"seed": run.seed, **training_recipe(run.settings.config)}, default=str))


def _marker(run: Run) -> dict | None:
    path = run.folder / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def _write_marker(run: Run, checkpoint: Path | None = None, score: float | None = None) -> None:
    record = {"group": run.group, "seed": run.seed, "recipe": _recipe(run), "finished": checkpoint is not None}
    if checkpoint is not None:  # relative: the compare folder may be moved
        record.update(checkpoint=str(checkpoint.resolve().relative_to(run.folder.resolve())), val_the_metric=score)
    write_atomic(run.folder / MARKER, (json.dumps(record, indent=2) + "\n").encode())


def _last_checkpoint(run: Run) -> Path | None:
    """last.ckpt of the run's newest version folder that has one (an unfinished fit to resume)."""
    found = [p for p in run.folder.glob("version_*/checkpoints/last.ckpt") if p.parent.parent.name[8:].isdigit()]
    return max(found, key=lambda p: int(p.parent.parent.name[8:]), default=None)


def state(run: Run) -> tuple[str, Path | None]:
    """("finished", its best checkpoint), ("resume", last.ckpt) or ("train", None); a run folder of another
    recipe, or a finished run whose checkpoint is gone, is refused."""
    marker = _marker(run)
    if marker is None:
        return "train", None
    if marker["recipe"] != _recipe(run):
        old, new = marker["recipe"], _recipe(run)
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        diff = ", ".join(f"{k}={old.get(k)!r} there, {new.get(k)!r} now" for k in keys)
        raise ConfigError(f"{run.folder} holds {run.group} seed {run.seed} trained with other settings ({diff}): "
                          "give this comparison another exp_name or log_dir, or delete that folder to retrain "
                          "it")  # fmt: skip
    if marker["finished"]:
        checkpoint = run.folder / marker["checkpoint"]
        if not checkpoint.is_file():
            raise MissingFileError(f"{run.folder / MARKER} says {run.group} seed {run.seed} finished, but its "
                                   f"checkpoint {checkpoint} is gone; delete {run.folder} to retrain it")  # fmt: skip
        return "finished", checkpoint
    last = _last_checkpoint(run)
    return ("resume", last) if last is not None else ("train", None)


def train_run(run: Run, resume_from: Path | None) -> Path:
    """Train (or resume) one run; returns its best checkpoint (last.ckpt when no validation ran) after marking the
    run finished."""
    if is_launcher_process():
        _write_marker(run)  # the recipe first: a killed run is recognised (and resumed) by the next command
    config = {**run.settings.config, "resume_from": str(resume_from) if resume_from else None}
    trainer = train(config)
    best, last = trainer.checkpoint_callbacks
    checkpoint = Path(best.best_model_path or last.last_model_path)
    if trainer.state.finished and trainer.is_global_zero and is_launcher_process():
        score = None if best.best_model_score is None else float(best.best_model_score)
        _write_marker(run, checkpoint, score)
    return checkpoint


def compare(config: dict, command_line: set[str] = frozenset()) -> Path:
    """Train what is missing, sweep every run, write compare.md; returns the sweep's output folder."""
    config = resolve(config)
    folder, runs = plan(config, command_line)
    for run in runs:  # every file and the machine, before any run trains
        check_files(run.settings)
        check_machine(run.settings)
    check_log_dir(runs[0].settings)
    states = [state(run) for run in runs]
    checkpoints = []
    for i, (run, (kind, path)) in enumerate(zip(runs, states), 1):
        what = f"compare: {run.group} seed {run.seed} ({i}/{len(runs)})"
        if kind == "finished":
            print(f"{what}: finished earlier, reusing {path}", flush=True)
            checkpoints.append(path)
            continue
        print(f"{what}: {'resuming from ' + str(path) if kind == 'resume' else 'training'} in {run.folder}", flush=True)
        checkpoints.append(train_run(run, path))

    sweep_config = {**config, "log_dir": str(folder), "load_path": "", "sweep_paths": [str(p) for p in checkpoints],
                    "sweep_groups": [run.group for run in runs]}  # fmt: skip
    # the runs' model keys come from their checkpoints; keys typed for training must not be re-checked against them
    out_dir = sweep(sweep_config, set(command_line) - set(MODEL_KEYS))
    if is_launcher_process() and (out_dir / "sweep.csv").is_file():
        text = summary(read_rows(out_dir / "sweep.csv"), runs, out_dir)
        write_atomic(out_dir / "compare.md", text.encode())
        print(
            text + f"\ncompare outputs: {out_dir}/compare.md, sweep.md, sweep.png (.pdf, .svg), sweep.csv", flush=True
        )
    return out_dir


def _percent(values: list[float]) -> str:
    """mean ± sample std in % (std 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * 100:.2f} ± {std * 100:.2f}"


def summary(rows: list[dict], runs: list[Run], out_dir: Path) -> str:
    """compare.md: per group (backbone x method), the_metric averaged over each missing type's ratios and over the
    whole grid, per checkpoint, then mean ± std over the seeds; the runs; where the full table is."""
    tasks = runs[0].settings.model.tasks
    title = " + ".join(f"{t} {TASKS[t].the_metric}" for t in tasks)
    groups = list(dict.fromkeys(run.group for run in runs))
    types = list(dict.fromkeys(r["missing_type"] for r in rows))
    ratios = sorted({float(r["missing_ratio"]) for r in rows})
    per_type = line_averages(rows)
    whole: dict[str, dict[str, list[float]]] = {}  # group -> checkpoint -> the_metric at every grid point
    for r in rows:
        whole.setdefault(r["group"], {}).setdefault(r["checkpoint"], []).append(float(r["the_metric"]))
    lines = [
        f"# Every method on every backbone: {title} (%)",
        "",
        f"Each cell: a checkpoint's {title} averaged over the sweep's missing ratios "
        f"({', '.join(f'{r:g}' for r in ratios)}) for one missing type, or over every type and ratio (whole grid); "
        "then mean ± std (sample) over the seeds.",
        "",
        "| backbone | method | seeds | " + " | ".join(f"{t} missing" for t in types) + " | whole grid |",
        "|---|---|---|" + "---|" * (len(types) + 1),
    ]
    for group in groups:
        members = [run for run in runs if run.group == group]
        model = members[0].settings.model
        cells = [f"{per_type[group, t][0] * 100:.2f} ± {per_type[group, t][1] * 100:.2f}" for t in types]
        averages = [sum(v) / len(v) for v in whole[group].values()]
        seeds = ", ".join(str(run.seed) for run in members)
        lines.append(f"| {model.backbone} | {model.prompt_method} | {seeds} | " + " | ".join(cells)
                     + f" | {_percent(averages)} |")  # fmt: skip
    lines += ["", f"Full table (every ratio): `{out_dir / 'sweep.md'}`; plot: `{out_dir / 'sweep.png'}`; every "
              f"metric: `{out_dir / 'sweep.csv'}`.", "", "Runs (group, seed: run folder):", ""]  # fmt: skip
    lines += [f"- {run.group}, seed {run.seed}: `{run.folder}`" for run in runs]
    return "\n".join(lines) + "\n"
