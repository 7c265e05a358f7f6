"""`run.py protocol`: one model per training missing case, each tested at every case (the paper's train x test
matrix with averages), resumable case by case, with its refusals before anything is written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdpl.errors import ConfigError
from mdpl.sweep import protocol as protocol_module
from mdpl.sweep.protocol import MARKER, protocol
from mdpl.train import trainer as trainer_module

TYPES = ["text", "image", "both"]
NAMES = ["text missing", "image missing", "both missing", "average"]
TEST_SAMPLES = 6  # of make_arrows' 40 samples


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_arrows) -> Path:
    return make_arrows(tmp_path_factory.mktemp("protocol_data"), "food101")


@pytest.fixture(scope="module")
def done(data, tmp_path_factory, tiny_config) -> tuple[dict, Path]:
    """(config, protocol folder) of a finished protocol: three one-epoch fits, each tested at three cases."""
    config = tiny_config("food101", data, tmp_path_factory.mktemp("protocol"), max_epoch=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a shared machine (conftest's one_thread)
    try:
        return config, protocol(config)
    finally:
        torch.set_num_threads(threads)


def _table(folder: Path) -> list[list[str]]:
    lines = (folder / "protocol.md").read_text().splitlines()
    return [[c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("|")]


def _rows(folder: Path) -> list[dict]:
    with open(folder / "protocol.csv") as f:
        return list(csv.DictReader(f))


def _case_files(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file of the cases' folders with its modification time and size."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("train_*/**/*") if p.is_file()}


def test_the_matrix_with_its_averages(done):
    _, folder = done
    header, _, *body = _table(folder)
    assert header == ["trained \\ tested", *NAMES]
    assert [row[0] for row in body] == NAMES
    values = [[float(v) for v in row[1:]] for row in body]
    cells = [row[:3] for row in values[:3]]
    for row, average in zip(cells, values[:3]):
        assert average[3] == pytest.approx(sum(row) / 3, abs=0.006)
    for j in range(3):
        assert values[3][j] == pytest.approx(sum(row[j] for row in cells) / 3, abs=0.006)
    assert values[3][3] == pytest.approx(sum(map(sum, cells)) / 9, abs=0.006)
    rows = _rows(folder)  # every test metric per cell, in the table's order
    assert [(r["train_type"], r["test_type"]) for r in rows] == [(a, b) for a in TYPES for b in TYPES]
    for r, cell in zip(rows, (c for row in cells for c in row)):
        assert float(r["the_metric"]) == float(r["food101/test/accuracy"])
        assert float(r["the_metric"]) * 100 == pytest.approx(cell, abs=0.006)
        assert float(r["missing_ratio"]) == 0.7 and int(r["test_samples"]) == TEST_SAMPLES
    text = (folder / "protocol.md").read_text()
    assert "best checkpoint by val/the_metric" in text and "missing ratio 0.7" in text


def test_each_case_is_trained_into_its_folder_and_marked_finished(done):
    config, folder = done
    assert folder == Path(config["log_dir"]) / "mdpl_finetune_food101_seed42_protocol"
    rows = _rows(folder)
    for case in TYPES:
        finished = json.loads((folder / f"train_{case}" / MARKER).read_text())
        best = folder / f"train_{case}" / finished["best_checkpoint"]
        assert best.is_file() and best.name.startswith("epoch=")
        assert (folder / f"train_{case}" / finished["last_checkpoint"]).name == "last.ckpt"
        assert f"_train_{case}_seed42_" in finished["best_checkpoint"]  # the case's own exp_name
        assert {r["checkpoint"] for r in rows if r["train_type"] == case} == {str(best)}
        saved = torch.load(best, map_location="cpu", weights_only=False)["hyper_parameters"]["config"]
        assert saved["missing_type"] == {"train": case, "val": case, "test": case}
        assert saved["missing_ratio"] == {"train": 0.7, "val": 0.7, "test": 0.7}
    assert json.loads((folder / "config.json").read_text())["protocol_types"] == TYPES


def test_the_heat_map_is_written_for_papers(done):
    _, folder = done
    assert (folder / "protocol.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "protocol.pdf").read_bytes()[:4] == b"%PDF"
    assert "<svg" in (folder / "protocol.svg").read_text()
    assert not list(folder.rglob(".*.tmp"))  # written atomically: no temporary left


def test_a_second_run_trains_nothing_and_writes_the_same_files(done, monkeypatch):
    config, folder = done
    names = [f"protocol.{ext}" for ext in ("md", "csv", "png", "pdf", "svg")]
    before, files = {n: (folder / n).read_bytes() for n in names}, _case_files(folder)

    def no_fit(config: dict):
        raise AssertionError(f"case trained again: {config['log_dir']}")

    monkeypatch.setattr(protocol_module, "train", no_fit)
    assert protocol(config) == folder
    assert _case_files(folder) == files  # no case folder touched
    assert {n: (folder / n).read_bytes() for n in before} == before


def test_a_changed_training_recipe_is_refused_before_anything_is_written(done):
    config, folder = done
    files, record = _case_files(folder), (folder / "config.json").read_bytes()
    with pytest.raises(ConfigError, match=r"learning_rate=0\.5: .* trained with learning_rate=0\.001"):
        protocol({**config, "learning_rate": 0.5})
    assert _case_files(folder) == files and (folder / "config.json").read_bytes() == record


@pytest.mark.parametrize("saved_last", [True, False], ids=["after-last-ckpt", "before-any-checkpoint"])
def test_a_killed_case_is_resumed_or_started_again(saved_last, data, tmp_path, tiny_config, read_metrics, monkeypatch):
    """The fit of the only case dies at its first validation, after (or before) writing last.ckpt; the same command
    then resumes it from that last.ckpt in the same run folder (or trains it again in a new one)."""
    config = tiny_config("food101", data, tmp_path, protocol_types=["image"])  # two epochs
    real = trainer_module.LastCheckpoint.on_validation_end

    def killed(self, trainer, module):
        if not trainer.sanity_checking:
            if saved_last:
                real(self, trainer, module)
            raise RuntimeError("killed")

    monkeypatch.setattr(trainer_module.LastCheckpoint, "on_validation_end", killed)
    with pytest.raises(RuntimeError, match="killed"):
        protocol(config)
    monkeypatch.undo()
    case = Path(config["log_dir"]) / "mdpl_finetune_food101_seed42_protocol" / "train_image"
    lasts = list(case.glob("*/version_*/checkpoints/last.ckpt"))
    assert not (case / MARKER).exists() and len(lasts) == int(saved_last)

    resumed_from, real_train = [], protocol_module.train
    monkeypatch.setattr(protocol_module, "train", lambda c: resumed_from.append(c["resume_from"]) or real_train(c))
    folder = protocol(config)
    assert resumed_from == [str(lasts[0]) if saved_last else None]
    finished = json.loads((case / MARKER).read_text())
    versions = sorted(p.name for p in case.glob("*/version_*"))
    assert versions == (["version_0"] if saved_last else ["version_0", "version_1"])
    assert f"/{versions[-1]}/" in finished["best_checkpoint"]
    run = (case / finished["last_checkpoint"]).parent.parent
    epochs = [float(r["epoch"]) for r in read_metrics(run) if r.get("val/the_metric")]
    assert epochs == [0, 1]  # the resumed fit went on from epoch 0's validation, the new one ran both
    assert [r[0] for r in _table(folder)[2:]] == ["image missing", "average"]


@pytest.mark.parametrize(
    ("updates", "key"),
    [
        (dict(protocol_types=[]), "protocol_types"),
        (dict(protocol_types="text"), "protocol_types"),
        (dict(protocol_types=["text", "txt"]), "protocol_types"),
        (dict(protocol_types=["text", "text"]), "protocol_types"),
        (dict(test_type="both"), "test_type"),
        (dict(test_ratio=0.0), "test_ratio"),
        (dict(resume_from="last.ckpt"), "resume_from"),
        (dict(test_only=True), "test_only"),
        (dict(fast_dev_run=True), "fast_dev_run"),
        (dict(missing_ratio={"train": 1.5, "val": 0.7, "test": 0.7}), "missing_ratio.train"),
    ],
)
def test_a_bad_value_is_refused_before_any_folder_exists(updates, key, data, tmp_path, tiny_config):
    with pytest.raises(ConfigError, match=rf"config {key}="):
        protocol(tiny_config("food101", data, tmp_path, **updates))
    assert not (tmp_path / "result").exists()


def test_a_typed_missing_type_is_refused(data, tmp_path, tiny_config):
    with pytest.raises(ConfigError, match="config missing_type=.*set protocol_types instead"):
        protocol(tiny_config("food101", data, tmp_path), {"missing_type"})
    assert not (tmp_path / "result").exists()


def test_the_command_line_runs_the_protocol(tmp_path, repo):
    """The README's command from the command line on a small synthetic Food-101 (two epochs per case: that it runs
    and writes the matrix; the README quotes the full 30-epoch run's wall time and scores)."""
    raw, arrows = tmp_path / "raw", tmp_path / "raw" / "arrows"
    python = [sys.executable]
    subprocess.run([*python, "-m", "mdpl.data.synthetic", "food101", str(raw), "--samples", "60", "--classes", "4"],
                   check=True, cwd=repo, capture_output=True)  # fmt: skip
    subprocess.run([*python, "make_arrow.py", "--dataset", "food101", "--root", str(raw), "--out", str(arrows)],
                   check=True, cwd=repo, capture_output=True)  # fmt: skip
    command = [*python, str(repo / "run.py"), "protocol", "with", "task_finetune_food101", "tiny",
               f"data_root={arrows}", "food101_class_num=4", "max_epoch=2"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "result" / "mdpl_finetune_food101_seed42_protocol"
    header, _, *body = _table(folder)
    assert header == ["trained \\ tested", *NAMES] and [row[0] for row in body] == NAMES
    assert "protocol outputs:" in done.stdout
    assert all((folder / f"protocol.{ext}").is_file() for ext in ("md", "csv", "png", "pdf", "svg"))
