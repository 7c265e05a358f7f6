"""What `run.py` answers bad input with: one line `error: ...` on stderr naming what is wrong, where, and what
was expected, exit status 2, no traceback (unless --debug), and no folder left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdpl.cli import cli
from mdpl.train.module import TaskModule
from mdpl.train.run import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_arrows, tiny_config) -> dict:
    """Food-101 data and last.ckpt of one-epoch tiny MDPL and MAP runs, Hateful Memes data and its MDPL last.ckpt."""
    root = tmp_path_factory.mktemp("refusals")
    out = {"food101": make_arrows(root / "food101", "food101"), "hatememes": make_arrows(root / "hm", "hatememes")}
    for name, task, named in (("mdpl", "food101", None), ("map", "food101", "task_finetune_food101_map"),
                              ("hm", "hatememes", None)):  # fmt: skip
        main(tiny_config(task, out[task], root / name, named=named, max_epoch=1))
        [out[name]] = (root / name / "result").rglob("last.ckpt")
    return out


def _args(tiny_updates: dict, data: Path, out: Path, **updates) -> list[str]:
    paths = {"data_root": str(data), "log_dir": str(out / "result"), "records_root": str(out / "records"),
             "missing_table_root": str(out / "tables") + "/"}  # fmt: skip
    values = {**tiny_updates, **paths, **updates}
    return [f"{k}={v!r}" for k, v in values.items()]


def refused(capsys, argv: list[str], out: Path) -> str:
    """Run `run.py <argv>` in this process; assert a one-line refusal and no run folder; return the line."""
    assert cli(["run.py", *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    assert not (out / "result").exists() or not any((out / "result").iterdir())
    return lines[0]


def test_configuration_refusals_name_the_key_and_what_was_expected(capsys, runs, tiny_updates, tmp_path):
    data = runs["food101"]
    cases = [
        (dict(lerning_rate=0.1), r"config lerning_rate=0\.1: no such key \(did you mean learning_rate\?\)"),
        (dict(per_gpu_batchsize=0), r"config per_gpu_batchsize=0: expected an integer >= 1"),
        (dict(test_type="none"), r"config test_type='none': expected one of \('text', 'image', 'both'\)"),
        (dict(test_ratio=1.5), r"config test_ratio=1\.5: expected a number in \[0, 1\]"),
        (dict(exp_name="a/b"), r"config exp_name='a/b': expected a name without '/'"),
        (dict(exp_name="run\udcff"), r"config exp_name='run\\udcff': expected a non-empty string of valid UTF-8"),
        (dict(prompt_method="dcp", prompt_length=6), r"prompt_method='dcp' does not go with backbone='vilt'"),
        (dict(data_root=str(tmp_path / "none")), r"config data_root='.*none': no such folder"),
        (dict(load_path=str(tmp_path / "w.ckpt")), r"config load_path='.*w\.ckpt': no such file"),
        (dict(num_gpus=1), r"config num_gpus=1: this machine has 0 CUDA GPUs; set num_gpus=0"),
    ]
    for updates, message in cases:
        line = refused(capsys, ["with", "task_finetune_food101", *_args(tiny_updates, data, tmp_path, **updates)],
                       tmp_path)  # fmt: skip
        assert re.search(message, line), (updates, line)


def test_checkpoint_refusals_name_the_file_and_what_it_holds(capsys, runs, tiny_updates, tmp_path):
    def args(**updates) -> list[str]:
        return ["with", "task_finetune_food101", *_args(tiny_updates, runs["food101"], tmp_path, **updates)]

    map_ckpt, hm_ckpt = str(runs["map"]), str(runs["hm"])
    line = refused(capsys, args(resume_from=map_ckpt), tmp_path)  # a MAP run's last.ckpt under an MDPL config
    assert f"resume_from='{map_ckpt}' was trained for task(s) ['food101'], backbone='vilt', prompt_method='map'" in line
    assert "prompt_method='map' (config: 'mdpl')" in line
    line = refused(capsys, args(resume_from=str(runs["mdpl"]), hidden_size=64, num_heads=4), tmp_path)
    assert "hidden_size=32 (config: 64)" in line
    line = refused(capsys, args(resume_from=hm_ckpt), tmp_path)  # another task
    assert "trained for task(s) ['hatememes']" in line and "asks for task(s) ['food101']" in line
    # a wrong-task checkpoint is named as such, not blamed on the class count typed with it
    for command in (args(test_only=True, load_path=hm_ckpt, food101_class_num=10),
                    ["sweep", *args(sweep_paths=[hm_ckpt], food101_class_num=10)]):  # fmt: skip
        line = refused(capsys, command, tmp_path)
        assert "was trained for task(s) ['hatememes']" in line and "food101_class_num" not in line, line
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x80\x02not really a pickle")
    line = refused(capsys, args(test_only=True, load_path=str(garbage)), tmp_path)
    assert "not a readable checkpoint" in line and "weights_only" not in line
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": os.getcwd}, evil)  # a function to import: code, not data
    line = refused(capsys, args(test_only=True, load_path=str(evil)), tmp_path)
    assert "refused: unpickling it would run code" in line and "(it names posix.getcwd)" in line
    assert "trust_checkpoint=True" in line and "weights_only=False" not in line


def test_records_that_cannot_be_written_are_refused_before_the_evaluation(capsys, runs, tiny_updates, tmp_path):
    records = tmp_path / "records"
    (records / "food101" / "food101_x_on_missing_image").mkdir(parents=True)  # a folder where the file goes
    argv = ["with", "task_finetune_food101", *_args(tiny_updates, runs["food101"], tmp_path, test_only=True,
                                                    load_path=str(runs["mdpl"]), test_exp_name="x")]  # fmt: skip
    line = refused(capsys, argv, tmp_path)
    assert "food101_x_on_missing_image' is not a file" in line


@pytest.mark.slow  # a real process: its exit status, and --debug's traceback
def test_the_process_exits_with_status_2_and_debug_shows_the_traceback(tmp_path, repo):
    base = [sys.executable, "run.py", "with", "task_finetune_food101", "per_gpu_batchsize=4", "num_gpus=0",
            f"data_root={str(tmp_path / 'none')!r}", f"log_dir={str(tmp_path / 'result')!r}"]  # fmt: skip
    plain = subprocess.run(base, cwd=repo, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2
    assert [line for line in plain.stderr.splitlines() if line.strip()] == [
        f"error: config data_root='{tmp_path / 'none'}': no such folder (the folder holding the Arrow files written "
        "by make_arrow.py)"
    ]
    debug = subprocess.run([*base[:2], "-d", *base[2:]], cwd=repo, capture_output=True, text=True, timeout=300)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "MissingFileError" in debug.stderr
    assert not (tmp_path / "result").exists()


def test_a_checkpoint_stores_no_position_ids_and_loads_one_that_does(runs, tmp_path):
    saved = torch.load(runs["mdpl"], map_location="cpu", weights_only=False)
    assert "text_embeddings.position_ids" not in saved["state_dict"]
    saved["state_dict"]["text_embeddings.position_ids"] = torch.arange(16)[None]  # as official checkpoints hold it
    torch.save(saved, tmp_path / "with_ids.ckpt")
    TaskModule.load_from_checkpoint(tmp_path / "with_ids.ckpt", map_location="cpu")
