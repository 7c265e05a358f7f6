"""Ctrl-C (SIGINT) and SIGTERM stop the test suite and any run within seconds, and leave no half-written file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # each starts Python processes and waits for them


def _wait_for(check, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_suite_inside_a_fit(signum, tmp_path, repo):
    """Two tiny fits of a minute each: the signal arrives inside the first, and the second never starts."""
    marker = tmp_path / "started"
    test = tmp_path / "test_long.py"
    test.write_text(
        "import pytest\n"
        "from mdpl.train.run import main\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_fit(n, tmp_path, make_arrows, tiny_config):\n"
        "    data = make_arrows(tmp_path, 'food101')\n"
        f"    open({str(marker)!r} + str(n), 'w').close()\n"
        "    main(tiny_config('food101', data, tmp_path, max_epoch=500))\n"
    )
    # tests/conftest.py as a plugin: its fixtures and its signal handling (the suite's own)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", str(test)]
    proc = subprocess.Popen(command, cwd=repo / "tests", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: Path(f"{marker}1").exists() or proc.poll() is not None, 180)
        time.sleep(8)  # well inside the fit
        sent = time.monotonic()
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
        stopped = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode != 0, out
    assert stopped < 30, f"stopped {stopped:.0f} s after the signal"
    assert not Path(f"{marker}2").exists(), out  # the session ended: the next test never ran


def test_sigterm_stops_a_run_and_leaves_no_half_written_file(tmp_path, repo, make_arrows, tiny_updates):
    data = make_arrows(tmp_path / "data", "food101")
    updates = {**tiny_updates, "data_root": str(data), "log_dir": str(tmp_path / "result"),
               "missing_table_root": str(tmp_path / "tables") + "/", "max_epoch": 500}  # fmt: skip
    args = [f"{k}={v!r}" for k, v in updates.items()]
    proc = subprocess.Popen([sys.executable, "run.py", "with", "task_finetune_food101", *args], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_for(lambda: any((tmp_path / "result").rglob("last.ckpt")) or proc.poll() is not None, 180)
        time.sleep(2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        stopped = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 143 and stopped < 30, out
    assert "stopped: SIGTERM received" in out
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    [last] = (tmp_path / "result").rglob("last.ckpt")
    assert "state_dict" in torch.load(last, map_location="cpu", weights_only=False)
