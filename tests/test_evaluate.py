"""The one evaluation path (mdpl.train.evaluate): test_only is the sweep's one-point case, so every grid point of a
sweep gives exactly the metrics of a test_only run at that point (random patch order included: each point has
its own generator), with each test image decoded once per pass, for several checkpoints at once, with loader
workers, and on several processes (each sample on one process, none repeated)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import ImageFile

from mdpl.sweep import grid as sweep_module
from mdpl.sweep.grid import sweep
from mdpl.train.run import main

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = dict(sweep_types=["text", "image", "both"], sweep_ratios=[0.0, 0.5, 1.0])
# every forward draws: a random subset of 2 of each image's 4 or 6 patches
RANDOM = dict(patch_order="random", max_image_len=2)
COMMAND_LINE = {"sweep_paths", "sweep_types", "sweep_ratios", "patch_order", "max_image_len", "num_workers"}
TEST_ONLY_LINE = {"test_only", "load_path", "test_type", "test_ratio", "patch_order", "max_image_len", "num_workers"}
NOT_METRICS = {"checkpoint", "prompt_method", "backbone", "label", "missing_type", "missing_ratio", "group", "seed",
               "effective_missing_rate", "test_samples"}  # fmt: skip


@pytest.fixture
def decodes(monkeypatch) -> list:
    """One entry per image decode (a PIL ImageFile loading its pixels; later load() calls are no-ops)."""
    calls, real = [], ImageFile.ImageFile.load

    def load(self):
        if getattr(self, "_im", None) is None:
            calls.append(self)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def _last(out: Path) -> str:
    [run] = (out / "result").iterdir()
    return str(run / "version_0" / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def food101(tmp_path_factory, make_arrows, tiny_config) -> tuple[Path, dict[str, str]]:
    """(data_root, {"mdpl": last.ckpt, "map": last.ckpt}) of one-epoch tiny runs."""
    root = tmp_path_factory.mktemp("eval_food101")
    data = make_arrows(root, "food101")
    ckpts = {}
    for method, named in (("mdpl", None), ("map", "task_finetune_food101_map")):
        main(tiny_config("food101", data, root / method, named=named, max_epoch=1))
        ckpts[method] = _last(root / method)
    return data, ckpts


def _rows(out: Path) -> list[dict]:
    with open(out / "sweep.csv") as f:
        return list(csv.DictReader(f))


def _metrics(row: dict) -> dict[str, float]:
    """A sweep.csv row's metrics under trainer.test's names."""
    return {("test/the_metric" if k == "the_metric" else k): float(v) for k, v in row.items() if k not in NOT_METRICS}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("method", ["mdpl", "map"])
def test_every_point_equals_its_test_only_run(food101, tmp_path, tiny_config, method, workers):
    data, ckpts = food101
    named = "task_finetune_food101_map" if method == "map" else None
    shared = dict(named=named, missing_table_root=str(tmp_path / "tables") + "/", num_workers=workers, **RANDOM)
    config = tiny_config("food101", data, tmp_path / "sweep", sweep_paths=[ckpts[method]], **GRID, **shared)
    rows = _rows(sweep(config, COMMAND_LINE))
    assert len(rows) == 9
    assert {r["food101/test/loss"] for r in rows if r["missing_type"] == "text"} != {rows[0]["food101/test/loss"]}
    points = (
        [("both", 0.5), ("image", 1.0)] if workers else [(r["missing_type"], float(r["missing_ratio"])) for r in rows]
    )
    for missing_type, ratio in points:
        [metrics] = main(tiny_config("food101", data, tmp_path / "test_only", test_only=True, load_path=ckpts[method],
                                     test_type=missing_type, test_ratio=ratio, **shared), TEST_ONLY_LINE)  # fmt: skip
        [row] = [r for r in rows if r["missing_type"] == missing_type and float(r["missing_ratio"]) == ratio]
        assert _metrics(row) == pytest.approx(metrics, rel=0, abs=0)  # to the last bit


def test_two_checkpoints_share_one_pass_and_each_image_is_decoded_once(food101, tmp_path, tiny_config, monkeypatch,
                                                                        decodes):  # fmt: skip
    data, ckpts = food101
    passes = []
    evaluate = sweep_module.evaluate
    monkeypatch.setattr(sweep_module, "evaluate", lambda *a, **k: passes.append(len(a[1])) or evaluate(*a, **k))
    config = tiny_config("food101", data, tmp_path, sweep_paths=[ckpts["mdpl"], ckpts["map"]],
                         sweep_types=["text", "both"], sweep_ratios=[0.0, 0.5])  # fmt: skip
    rows = _rows(sweep(config, {"sweep_paths", "sweep_types", "sweep_ratios"}))
    assert passes == [2]  # both models, every point: one Lightning test over the test split
    assert len(decodes) == 6  # the 6 test images, each once (none is missing at every point: ratio 0)
    assert [r["prompt_method"] for r in rows] == ["mdpl"] * 4 + ["map"] * 4
    decodes.clear()
    for method in ("mdpl", "map"):  # each checkpoint's rows as a sweep of it alone
        alone = _rows(sweep({**config, "sweep_paths": [ckpts[method]], "log_dir": str(tmp_path / method)},
                            {"sweep_paths"}))  # fmt: skip
        assert [_metrics(r) for r in rows if r["prompt_method"] == method] == [_metrics(r) for r in alone]


def test_an_image_missing_at_every_point_is_not_decoded(food101, tmp_path, tiny_config, decodes):
    data, ckpts = food101
    config = tiny_config("food101", data, tmp_path, sweep_paths=[ckpts["mdpl"]], sweep_types=["image"],
                         sweep_ratios=[1.0])  # fmt: skip
    sweep(config, {"sweep_paths"})
    assert decodes == []


def test_mmimdb_point_equals_test_only_and_counts_samples(tmp_path, make_arrows, tiny_config):
    data = make_arrows(tmp_path / "mmimdb", "mmimdb")
    main(tiny_config("mmimdb", data, tmp_path / "fit", max_epoch=1))
    ckpt = _last(tmp_path / "fit")
    config = tiny_config("mmimdb", data, tmp_path / "sweep", sweep_paths=[ckpt], sweep_types=["both"],
                         sweep_ratios=[0.5], **RANDOM)  # fmt: skip
    [row] = _rows(sweep(config, COMMAND_LINE))
    [metrics] = main(tiny_config("mmimdb", data, tmp_path / "test", test_only=True, load_path=ckpt, test_type="both",
                                 test_ratio=0.5, **RANDOM), TEST_ONLY_LINE)  # fmt: skip
    assert _metrics(row) == pytest.approx(metrics, rel=0, abs=0)
    assert int(row["test_samples"]) > 6  # one sample per plot, not per movie


@pytest.mark.slow  # starts processes
def test_two_cpu_processes_give_the_single_process_table(food101, tmp_path, tiny_config, repo):
    """`python run.py sweep with ... cpu_processes=2` (Lightning relaunches run.py for the second process)."""
    data, ckpts = food101
    config = tiny_config("food101", data, tmp_path / "one", sweep_paths=[ckpts["mdpl"], ckpts["map"]],
                         sweep_types=["text", "both"], sweep_ratios=[0.5, 1.0])  # fmt: skip
    one = _rows(sweep(config, {"sweep_paths"}))
    keys = ("sweep_paths", "sweep_types", "sweep_ratios", "data_root", "missing_table_root", "food101_class_num",
            "hidden_size", "num_layers", "num_heads", "image_size", "max_text_len", "patch_order", "num_gpus",
            "precision", "num_workers", "per_gpu_batchsize")  # fmt: skip
    args = [f"{k}={config[k]!r}" for k in keys]
    args += [f"log_dir={str(tmp_path / 'two')!r}", "cpu_processes=2", "batch_size=8"]
    proc = subprocess.run([sys.executable, "run.py", "sweep", "with", "task_finetune_food101", *args], cwd=repo,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    [folder] = (tmp_path / "two").iterdir()
    two = _rows(folder / "version_0")
    assert len(two) == len(one) == 8
    for a, b in zip(one, two):
        assert (a["label"], a["missing_ratio"], a["test_samples"]) == (
            b["label"],
            b["missing_ratio"],
            b["test_samples"],
        )
        assert _metrics(b) == pytest.approx(_metrics(a), rel=1e-6, abs=1e-6)  # summation order only
