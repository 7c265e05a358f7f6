"""Run folders after faults: a resumed run removes the temporaries of writers killed mid-checkpoint, keeps one best
checkpoint, and continues its best-checkpoint tracking from a relative path too; float64 runs work end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mdpl.train.run import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_arrows) -> Path:
    return make_arrows(tmp_path_factory.mktemp("folders"), "food101")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_resumed_run_cleans_dead_writers_temporaries_and_keeps_one_best(data, tmp_path, tiny_config, monkeypatch):
    main(tiny_config("food101", data, tmp_path, max_epoch=1))
    [run] = (tmp_path / "result").glob("*/version_0")
    checkpoints = run / "checkpoints"
    stale = checkpoints / f".last.ckpt.{_dead_pid()}.tmp"  # what kill -9 during a checkpoint write leaves
    live = checkpoints / f".last.ckpt.{os.getppid()}.tmp"  # a writer that still runs
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)  # resume from a relative path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(tiny_config("food101", data, tmp_path, max_epoch=2, log_dir="result",
                         resume_from=str((checkpoints / "last.ckpt").relative_to(tmp_path))))  # fmt: skip
    assert not any("dirpath has changed" in str(w.message) for w in caught)  # best-checkpoint tracking continues
    assert not stale.exists() and live.exists()
    live.unlink()
    best = [p.name for p in checkpoints.iterdir() if p.name != "last.ckpt"]
    assert len(best) == 1 and "-v1" not in best[0], best  # one best checkpoint, no "-v1" copy
    assert [p.name for p in (tmp_path / "result").glob("*/version_*")] == ["version_0"]  # the same run folder


def test_precision_64_runs_in_float64_from_the_images_on(data, tmp_path, tiny_config):
    config = tiny_config("food101", data, tmp_path, precision=64, max_epoch=1)
    main(config)
    [last] = (tmp_path / "result").rglob("last.ckpt")
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["state_dict"]["food101_classifier.0.weight"].dtype == torch.float64
    [metrics] = main({**config, "test_only": True, "load_path": str(last)}, {"test_only", "load_path"})
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
