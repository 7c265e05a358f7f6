"""Two CPU processes (DDP over gloo) validate exactly like one process (`python run.py with ...`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mdpl.train.run import main

# learning_rate=0: the weights never change, so both runs validate the same model on the same data
SAME_MODEL = dict(learning_rate=0.0, max_epoch=1)


def _run(repo: Path, tiny: dict, data: Path, out: Path, processes: int) -> Path:
    """`python run.py with ...` (Lightning relaunches run.py for the second process)."""
    updates = {
        **tiny,
        **SAME_MODEL,
        "data_root": str(data),
        "log_dir": str(out / "result"),
        "records_root": str(out / "records"),
        "missing_table_root": str(out / "tables") + "/",
        "cpu_processes": processes,
    }
    args = [f"{k}={v!r}" for k, v in updates.items()]
    proc = subprocess.run(
        [sys.executable, "run.py", "with", "task_finetune_food101", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [run] = (out / "result").iterdir()
    return run / "version_0"


@pytest.mark.slow
def test_two_processes_give_the_same_validation_metrics(
    tmp_path, repo, tiny_updates, make_arrows, tiny_config, read_metrics, last_value
):
    # 40 samples -> 28 train, 6 val, 6 test: divisible by 2, so the DistributedSampler adds no duplicates
    data = make_arrows(tmp_path / "data", "food101", samples=40)
    main(tiny_config("food101", data, tmp_path / "one", **SAME_MODEL))
    [one] = (tmp_path / "one" / "result").iterdir()
    one, two = one / "version_0", _run(repo, tiny_updates, data, tmp_path / "two", 2)
    m1, m2 = read_metrics(one), read_metrics(two)
    for key in ("food101/val/loss", "food101/val/accuracy", "val/the_metric"):
        assert last_value(m2, key) == pytest.approx(last_value(m1, key), abs=1e-6), key
    assert (two / "checkpoints" / "last.ckpt").is_file()
