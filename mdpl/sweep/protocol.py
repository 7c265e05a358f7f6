"""The paper's protocol: `python run.py protocol with <task config> ...`.

The paper trains each model with one missing case (text, image or both, at a 70% missing ratio) and tests it under
every case at that ratio. For each case of protocol_types this trains one model (train, val and test missing type
= the case, every split at missing_ratio["train"], everything else from the config) through mdpl.train.trainer,
then tests each model's best checkpoint by val/the_metric (the paper's pick) at every case of protocol_types in one
pass (mdpl.train.evaluate), and writes the train-case x test-case matrix of the_metric with row, column and overall
averages. Layout, in {log_dir}/{exp_name}_seed{seed}_protocol/:

    config.json                  the resolved config and its training recipe, written before any training
    train_{case}/                the case's log_dir: {exp_name}_train_{case}_seed{seed}_from_{stem}/version_N/
    train_{case}/finished.json   written atomically once the case's fit has returned: its best and last checkpoint
    protocol.md, protocol.csv    the matrix in %; every test metric per cell
    protocol.png, .pdf, .svg     the matrix as a heat-map

Running the same command again resumes case by case: a case with finished.json is not trained again; a case
without it (killed) resumes from its newest last.ckpt (exactly, mdpl.train.resume), else starts again; a config
whose training recipe differs from config.json's is refused (a new protocol needs another exp_name or log_dir).
The models are evaluated again every time (one pass, deterministic), so the matrix always covers every case of
protocol_types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mdpl.data.datasets import Splits
from mdpl.data.tasks import SPLITS, TASKS
from mdpl.errors import ConfigError, MissingFileError, fail
from mdpl.files import write_atomic
from mdpl.model.factory import model_from_state_dict
from mdpl.sweep.groups import training_recipe
from mdpl.sweep.outputs import csv_bytes, plot_matrix, write_figure
from mdpl.train.evaluate import checkpoint_settings, evaluate
from mdpl.train.settings import MISSING_TYPES, Settings, check_files, resolve
from mdpl.train.trainer import build_trainer, check_log_dir, check_machine, is_launcher_process, train

MARKER = "finished.json"
# keys the protocol sets itself for every case: given, they would be overridden, so they are refused
OWN_KEYS = {
    "test_only": "trains and tests every case itself",
    "test_type": "tests every case of protocol_types",
    "test_ratio": 'tests at missing_ratio["train"]',
    "resume_from": "resumes each unfinished case from its own last.ckpt",
    "fast_dev_run": "evaluates each case's best checkpoint, which a fast_dev_run does not save",
}
FLAGS = ("test_only", "fast_dev_run")  # given when true; the other OWN_KEYS when not None or "" (test_ratio=0.0 is)


@dataclass
class Case:
    """One training missing case: its config, its folder and how far it got."""

    name: str
    config: dict
    folder: Path  # the case's log_dir
    finished: dict | None  # finished.json, paths relative to `folder`
    resume: Path | None  # the last.ckpt an unfinished case resumes from

    @property
    def best(self) -> Path:
        return self.folder / self.finished["best_checkpoint"]


def check_protocol(config: dict, command_line: set[str]) -> list[str]:
    """protocol_types checked, and the keys the protocol sets itself refused."""
    types = config["protocol_types"]
    if not isinstance(types, (list, tuple)) or not types or any(t not in MISSING_TYPES for t in types):
        fail("protocol_types", types, f"a non-empty list of missing types among {MISSING_TYPES}")
    if len(set(types)) != len(types):
        fail("protocol_types", types, "each missing type at most once")
    for key, why in OWN_KEYS.items():
        if bool(config[key]) if key in FLAGS else config[key] not in (None, ""):
            raise ConfigError(f"config {key}={config[key]!r}: `run.py protocol` {why}; drop {key}")
    if "missing_type" in command_line:  # each case sets it: a typed one would be silently replaced
        raise ConfigError(f"config missing_type={config['missing_type']!r}: `run.py protocol` trains and tests each "
                          "case of protocol_types; set protocol_types instead")  # fmt: skip
    return list(types)


def protocol_folder(config: dict) -> Path:
    return Path(config["log_dir"]) / f"{config['exp_name']}_seed{config['seed']}_protocol"


def case_config(config: dict, case: str, folder: Path) -> dict:
    """The fit of one case: missing type `case` in every split, every split at the training missing ratio, its own
    log_dir under the protocol folder and an exp_name that names the case."""
    ratio = config["missing_ratio"]["train"]
    return {
        **config,
        "missing_type": dict.fromkeys(SPLITS, case),
        "missing_ratio": dict.fromkeys(SPLITS, ratio),
        "log_dir": str(folder / f"train_{case}"),
        "exp_name": f"{config['exp_name']}_train_{case}",
    }


def protocol_recipe(config: dict) -> dict:
    """What must stay the same for finished and half-trained cases to be reused: the training recipe
    (mdpl.sweep.groups) less the missing type, which differs by case; as JSON reads it back."""
    recipe = training_recipe(config)
    recipe.pop("missing_type.train")
    return json.loads(json.dumps(recipe, default=str))


def check_recipe(folder: Path, recipe: dict) -> None:
    """A protocol folder holds the models of one training recipe: a config that trains otherwise is refused."""
    path = folder / "config.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())["recipe"]
    changed = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
    if changed:
        key = changed[0]
        raise ConfigError(
            f"config {key}={recipe.get(key)!r}: {str(folder)!r} holds a protocol trained with {key}={old.get(key)!r} "
            f"(changed: {', '.join(changed)}); to resume it use its settings, for a new protocol set another "
            "exp_name or log_dir"
        )


def find_case(name: str, config: dict) -> Case:
    """A case and its state: finished (finished.json, whose best checkpoint must exist), resumable (the newest
    last.ckpt of its run folders) or new."""
    folder = Path(config["log_dir"])
    if (folder / MARKER).is_file():
        case = Case(name, config, folder, json.loads((folder / MARKER).read_text()), None)
        if not case.best.is_file():
            raise MissingFileError(
                f"protocol case {name!r}: {str(folder / MARKER)!r} names the best checkpoint {str(case.best)!r}, "
                f"which no longer exists; delete {str(folder)!r} to train the case again"
            )
        return case
    lasts = sorted(folder.glob("*/version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return Case(name, config, folder, None, lasts[-1] if lasts else None)


def fit_case(case: Case) -> dict:
    """Train (or resume) a case; returns what finished.json records, written by the launcher process."""
    trainer = train({**case.config, "resume_from": str(case.resume) if case.resume else None})
    best, last = trainer.checkpoint_callbacks
    if not best.best_model_path:
        raise ConfigError(
            f"protocol case {case.name!r}: its fit ran no validation, so there is no best checkpoint by "
            "val/the_metric; raise max_steps or lower val_check_interval"
        )
    folder = case.folder.resolve()
    finished = {
        "case": case.name,
        "best_checkpoint": str(Path(best.best_model_path).resolve().relative_to(folder)),
        "best_val_the_metric": float(best.best_model_score),
        "last_checkpoint": str(Path(last.last_model_path).resolve().relative_to(folder)),
    }
    if trainer.is_global_zero and is_launcher_process():
        write_atomic(case.folder / MARKER, (json.dumps(finished, indent=2) + "\n").encode())
    return finished


def evaluate_cases(cases: list[Case], types: list[str], ratio: float, command_line: set[str]) -> list[dict]:
    """Every case's best checkpoint at every test case (one pass over the test split): one row per cell, with
    every test metric."""
    runs = [checkpoint_settings(str(c.best), c.config, command_line, "protocol checkpoint") for c in cases]
    base = runs[0][0]
    models = [model_from_state_dict(s.model, sd, f"protocol checkpoint {str(c.best)!r}", s.run.seed)
              for c, (s, sd, _) in zip(cases, runs)]  # fmt: skip
    splits = Splits(base.data)
    grid = [(t, ratio) for t in types]
    results = evaluate(base, models, grid, splits, build_trainer(base, None, progress=False))
    rows = []
    for case, points in zip(cases, results):
        for test_type, (metrics, rate, samples) in zip(types, points):
            rows.append({
                "train_type": case.name,
                "test_type": test_type,
                "missing_ratio": ratio,
                "the_metric": metrics["test/the_metric"],
                "checkpoint": str(case.best),
                "best_val_the_metric": case.finished["best_val_the_metric"],
                "effective_missing_rate": rate,
                "test_samples": samples,
                **{k: v for k, v in sorted(metrics.items()) if k != "test/the_metric"},
            })  # fmt: skip
    return rows


def with_averages(rows: list[dict], types: list[str]) -> list[list[float]]:
    """the_metric in % as a (train case x test case) matrix, plus each row's average (last column), each column's
    average (last row) and the overall average (corner)."""
    value = {(r["train_type"], r["test_type"]): r["the_metric"] * 100 for r in rows}
    matrix = [[value[a, b] for b in types] for a in types]
    matrix = [row + [sum(row) / len(row)] for row in matrix]
    return matrix + [[sum(col) / len(col) for col in zip(*matrix)]]


def _names(types: list[str]) -> list[str]:
    """The matrix's row (and column) names: the cases, then the averages."""
    return [f"{t} missing" for t in types] + ["average"]


def markdown(rows: list[dict], types: list[str], title: str, folder: Path) -> str:
    """protocol.md: the matrix in % with its averages, and which checkpoint each row evaluates."""
    matrix, names = with_averages(rows, types), _names(types)
    ratio, samples = rows[0]["missing_ratio"], rows[0]["test_samples"]
    lines = [
        f"{title} (%) on the test split ({samples} test samples) at missing ratio {ratio:g}. Rows: the missing case "
        "a model was trained and validated with; columns: the missing case it is tested with. Each model is its "
        "fit's best checkpoint by val/the_metric (as the paper picks).",
        "",
        "| trained \\ tested | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    lines += [f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for name, row in zip(names, matrix)]
    lines += ["", "Checkpoints (best by val/the_metric):", ""]
    for r in rows[:: len(types)]:
        path = Path(r["checkpoint"]).resolve().relative_to(folder.resolve())
        lines.append(f"- {r['train_type']}: `{path}` (val/the_metric {r['best_val_the_metric'] * 100:.2f})")
    return "\n".join(lines) + "\n"


def write_protocol(rows: list[dict], types: list[str], title: str, folder: Path) -> str:
    """protocol.md, protocol.csv and protocol.png / .pdf / .svg, each written atomically; returns the table."""
    table = markdown(rows, types, title, folder)
    write_atomic(folder / "protocol.md", table.encode())
    write_atomic(folder / "protocol.csv", csv_bytes(rows))
    names = _names(types)
    heading = f"{title} at missing ratio {rows[0]['missing_ratio']:g}, best checkpoint by val/the_metric"
    write_figure(plot_matrix(with_averages(rows, types), names, names, heading, f"{title} (%)"), folder, "protocol")
    return table


def _state(case: Case) -> str:
    if case.finished:
        return f"finished (best {case.finished['best_checkpoint']}): not trained again"
    return f"resumes from {case.resume}" if case.resume else "trains"


def protocol(config: dict, command_line: set[str] = frozenset()) -> Path:
    """Train every case of protocol_types that is not finished, evaluate every case's best checkpoint at every
    case, write the matrix; returns the protocol folder. Every refusal comes before anything is written."""
    config = resolve(config)
    types = check_protocol(config, set(command_line))
    folder = protocol_folder(config)
    configs = {t: case_config(config, t, folder) for t in types}
    settings = [Settings.from_config(c) for c in configs.values()]  # every key checked, for every case
    check_files(settings[0])
    check_log_dir(settings[0])
    check_machine(settings[0])
    Splits(settings[0].data).check(nonempty=("train", "val", "test"))
    recipe = protocol_recipe(configs[types[0]])
    check_recipe(folder, recipe)
    cases = [find_case(t, c) for t, c in configs.items()]

    if is_launcher_process():
        record = {"config": config, "protocol_types": types, "recipe": recipe}
        write_atomic(folder / "config.json", (json.dumps(record, indent=2, default=str) + "\n").encode())
    for i, case in enumerate(cases, 1):
        print(f"protocol case {case.name} ({i}/{len(cases)}): {_state(case)}", flush=True)
        if not case.finished:
            case.finished = fit_case(case)

    ratio = config["missing_ratio"]["train"]
    rows = evaluate_cases(cases, types, ratio, command_line)
    if is_launcher_process():  # the other processes of a multi-device run only took part in the passes
        title = " + ".join(f"{t} {TASKS[t].the_metric}" for t in settings[0].model.tasks)
        print(write_protocol(rows, types, title, folder), flush=True)
        print(f"protocol outputs: {folder}/protocol.md, protocol.csv, protocol.png (.pdf, .svg)", flush=True)
    return folder
