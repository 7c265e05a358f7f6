"""What a researcher sees: `run.py` output in a log file, the end-of-run summary, run folder names, print_config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mdpl.train.settings import Settings
from mdpl.train.trainer import path_stem, run_name

NOISE = ("Changed type of config entry", "No observers have been added", "Tip:", "LeafSpec", "\r", "\x1b[")


def _run(args: list[str], cwd: Path) -> str:
    """`python run.py ...` with stdout and stderr going to a file, as in a batch job; returns the log."""
    log = cwd / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "run.py"), *args], cwd=cwd,
                              stdout=f, stderr=subprocess.STDOUT, timeout=600)  # fmt: skip
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


@pytest.mark.slow
def test_training_and_evaluation_logs_are_plain_and_say_what_they_did(tmp_path, make_arrows, tiny_updates):
    data = make_arrows(tmp_path / "data", "food101")
    common = [f"data_root={data}", f"log_dir={tmp_path / 'result'}", f"missing_table_root={tmp_path / 'tables'}/",
              f"records_root={tmp_path / 'records'}"]  # fmt: skip
    tiny = [f"{k}={v!r}" for k, v in tiny_updates.items() if k != "num_workers"]
    log = _run(["with", "task_finetune_food101", *tiny, "num_workers=64", *common], tmp_path)
    for noise in NOISE:
        assert noise not in log, noise
    assert log.count("num_workers=64 reduced to") == 1  # said once, not per loader
    run = tmp_path / "result" / "mdpl_finetune_food101_seed42_from_" / "version_0"
    assert f"run folder:      {run}" in log
    assert "best checkpoint: " in log and "(val/the_metric " in log
    assert f"last checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in log
    hparams = (run / "hparams.yaml").read_text()  # the resolved configuration of the run
    assert "config:" in hparams and "hidden_size: 32" in hparams

    ckpt = run / "checkpoints" / "last.ckpt"
    log = _run(["with", "task_finetune_food101", *common, "num_gpus=0", "per_gpu_batchsize=4", "test_only=True",
                f"load_path={ckpt}", "test_type=image", "test_ratio=0.5", "test_exp_name=tiny"], tmp_path)  # fmt: skip
    for noise in NOISE:
        assert noise not in log, noise
    records = tmp_path / "records" / "food101" / "food101_tiny_on_missing_image"
    assert "test metrics: food101/test/accuracy " in log
    assert f"records: appended to {records}" in log
    assert records.read_text().startswith("missing ratio: 0.5, Accuracy: ")
    evaluation = tmp_path / "result" / "mdpl_finetune_food101_seed42_from_last_test_tiny_missing_image_0.5"
    assert (evaluation / "version_0" / "hparams.yaml").is_file()  # the resolved configuration of the run


@pytest.mark.parametrize(
    "load_path, stem",
    [("vilt_200k_mlm_itm.ckpt", "vilt_200k_mlm_itm"), ("w/model.safetensors", "model"),
     ("w/pytorch_model.bin", "pytorch_model"), ("hf/vilt-b32-mlm/", "vilt-b32-mlm"), ("", "")],
)  # fmt: skip
def test_run_folder_names_use_the_load_path_stem(load_path, stem):
    assert path_stem(load_path) == stem


def test_evaluation_runs_are_named_by_test_exp_name_type_and_ratio(tiny_config, tmp_path):
    base = dict(load_path="runs/a/last.ckpt", test_only=True, test_type="text", test_ratio=0.3)
    named = Settings.from_config(tiny_config("food101", tmp_path, tmp_path, **base, test_exp_name="mdpl"))
    plain = Settings.from_config(tiny_config("food101", tmp_path, tmp_path, **base))
    assert run_name(named) == "mdpl_finetune_food101_seed42_from_last_test_mdpl_missing_text_0.3"
    assert run_name(plain) == "mdpl_finetune_food101_seed42_from_last_test_missing_text_0.3"
    train = Settings.from_config(tiny_config("food101", tmp_path, tmp_path, load_path="w/vilt.safetensors"))
    assert run_name(train) == "mdpl_finetune_food101_seed42_from_vilt"


@pytest.mark.slow
def test_print_config_documents_keys_not_sections(tmp_path):
    out = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "run.py"), "print_config"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "# ---" not in out.stdout
    assert "masked_query = False" in out.stdout and "# mdpl: max-pool the memory queries" in out.stdout
