"""Exact resume and run folders: a fit killed after a checkpoint written inside an epoch and resumed from its
last.ckpt ends like an uninterrupted fit (same steps, learning rate, weights and metrics.csv), for every task;
concurrent runs of one exp_name get their own version folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdpl.train.module import TaskModule
from mdpl.train.run import main

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands for a kill: raised at the start of a chosen training batch, after a checkpoint was written."""


def _run_dir(out: Path) -> Path:
    [run] = (out / "result").iterdir()
    [version] = run.iterdir()  # a resumed run continues in its own folder: never a second version
    return version


# task -> (val_check_interval, kill before the global batch index kill(N), N = train batches per epoch, and
# whether last.ckpt is then inside an epoch). Food-101: validation every 3 of 7 batches, killed in epoch 0 with
# last.ckpt written inside an accumulation window (batch 3, steps every 2 batches); MM-IMDb: the task config's
# 0.2 (validation after every batch), killed in epoch 1; Hateful Memes: the task config's 0.11, killed at the
# start of epoch 1, so last.ckpt is the one of the validation after the last batch of epoch 0.
CASES = {
    "food101": (0.5, lambda n: 4, True),
    "mmimdb": (0.2, lambda n: n + 3, True),
    "hatememes": (0.11, lambda n: n, False),
}
# and DCP on the small CLIP (Food-101 as above): its random dynamic prompts are drawn when the model is built


@pytest.mark.parametrize("task", [*sorted(CASES), "food101_dcp"])
def test_resume_from_a_checkpoint_inside_an_epoch_ends_like_an_uninterrupted_run(
    task, tmp_path, monkeypatch, make_arrows, tiny_config, read_metrics
):
    task, named = task.split("_")[0], ("task_finetune_food101_dcp" if task.endswith("dcp") else None)
    interval, kill_at, inside = CASES[task]
    data = make_arrows(tmp_path / "data", task)
    # dropout on and random patch order: the continuation must draw the same random numbers
    updates = dict(val_check_interval=interval, patch_order="random", drop_rate=0.1, max_epoch=2, named=named)
    main(tiny_config(task, data, tmp_path / "full", **updates))
    full = _run_dir(tmp_path / "full")

    per_epoch = []  # train batches per epoch, as the killed run's loop counts them

    def kill(self, batch, batch_idx):
        trainer = self.trainer
        per_epoch.append(trainer.num_training_batches)
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready - 1 == kill_at(trainer.num_training_batches):
            raise Killed

    monkeypatch.setattr(TaskModule, "on_train_batch_start", kill, raising=False)
    with pytest.raises(Killed):
        main(tiny_config(task, data, tmp_path / "cut", **updates))
    monkeypatch.undo()
    cut = _run_dir(tmp_path / "cut")
    last = cut / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    position = saved["callbacks"]["ExactResume"]  # the exact-resume state: batches of its epoch trained so far
    assert (0 < position["batches"] < per_epoch[-1]) == inside  # written inside an epoch, or by its last validation

    main(tiny_config(task, data, tmp_path / "cut", resume_from=str(last), **updates))
    resumed = _run_dir(tmp_path / "cut")  # the same version folder
    assert resumed == cut and (cut / "hparams.yaml").is_file()

    a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["lr_schedulers"][0]["_last_lr"] == b["lr_schedulers"][0]["_last_lr"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():  # CPU, no workers: bit for bit
        assert torch.equal(value, b["state_dict"][key]), key
    rows_full, rows_resumed = read_metrics(full), read_metrics(cut)
    assert rows_resumed == rows_full  # one continuous metrics.csv, the same rows and values
    values = [float(v) for r in rows_resumed for k, v in r.items() if v not in (None, "") and k != "step"]
    assert values and all(torch.isfinite(torch.tensor(values)))
    assert any(f"{task}/train/loss" in r and r[f"{task}/train/loss"] for r in rows_resumed)


def test_resume_continues_in_the_folder_of_resume_from_only_under_log_dir(tmp_path, tiny_config, make_arrows):
    from mdpl.train.settings import Settings
    from mdpl.train.trainer import resume_folder

    data = tmp_path / "data"
    ckpt = tmp_path / "result" / "some_run" / "version_3" / "checkpoints" / "last.ckpt"

    def settings(**updates):
        return Settings.from_config(tiny_config("food101", data, tmp_path, **updates))

    assert resume_folder(settings(resume_from=str(ckpt))) == ckpt.parent.parent.resolve()
    assert resume_folder(settings(resume_from=str(ckpt), log_dir=str(tmp_path / "other"))) is None
    assert resume_folder(settings(resume_from=str(tmp_path / "elsewhere" / "last.ckpt"))) is None
    assert resume_folder(settings()) is None


def test_epoch_sampler_order_depends_on_seed_and_epoch_and_skips_after_a_resume():
    from mdpl.train.datamodule import EpochSampler

    data = list(range(10))
    a, b = EpochSampler(data, seed=3, batch_size=2), EpochSampler(data, seed=3, batch_size=2)
    a.set_epoch(1)
    b.set_epoch(1)
    order = list(a)
    assert order == list(b) and sorted(order) == data
    b.set_epoch(2)
    assert list(b) != order
    b.set_epoch(1)
    b.skip_batches = 2
    assert list(b) == order[4:]
    b.set_epoch(2)  # a skip belongs to its epoch
    assert b.skip_batches == 0
    shards = [EpochSampler(data, seed=3, batch_size=2, num_replicas=2, rank=r) for r in (0, 1)]
    for s in shards:
        s.set_epoch(1)
    assert sorted(list(shards[0]) + list(shards[1])) == data  # DDP: disjoint shares of one order


def test_rank_variables_decide_the_launcher_and_only_the_launcher_creates_a_version_folder(
    tmp_path, monkeypatch, tiny_config
):
    from mdpl.train.settings import Settings
    from mdpl.train.trainer import RANK_VARIABLES, build_trainer, is_launcher_process, run_folder

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert is_launcher_process()
    settings = Settings.from_config(tiny_config("food101", tmp_path / "data", tmp_path))
    first = build_trainer(settings, run_folder(settings), progress=False)
    assert Path(first.logger.log_dir).name == "version_0" and Path(first.logger.log_dir).is_dir()
    for name in RANK_VARIABLES:
        monkeypatch.setenv(name, "1")
        assert not is_launcher_process()
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP process Lightning started: names a folder, creates none
    folder = run_folder(settings)
    other = build_trainer(settings, folder, progress=False)  # (rank 0 writes every file)
    assert folder.name == "version_unused" and not folder.exists()
    assert other.loggers[0].version == other.loggers[1].version == "version_unused"
    assert sorted(p.name for p in Path(first.logger.log_dir).parent.iterdir()) == ["version_0"]


CHILD = "import json, sys; from mdpl.train.run import main; main(json.loads(sys.argv[1]))"


def test_concurrent_runs_of_one_exp_name_get_their_own_version_folders(tmp_path, make_arrows, tiny_config):
    data = make_arrows(tmp_path / "data", "food101", samples=12)
    config = tiny_config("food101", data, tmp_path, max_epoch=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    [run] = (tmp_path / "result").iterdir()
    versions = sorted(p.name for p in run.iterdir())
    assert versions == ["version_0", "version_1", "version_2"]
    for v in versions:
        folder = run / v
        assert (folder / "hparams.yaml").is_file() and (folder / "metrics.csv").is_file()
        assert (folder / "checkpoints" / "last.ckpt").is_file()
    # each process reported its own folder
    reported = sorted(
        line.split()[-1] for out in outputs for line in out.splitlines() if line.startswith("run folder:")
    )
    assert [Path(r).name for r in reported] == versions
