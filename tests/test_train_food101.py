"""Training, evaluation, resume, sweep and bad input on synthetic Food-101 with a tiny ViLT (CPU)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from mdpl.errors import ConfigError
from mdpl.sweep.grid import sweep
from mdpl.sweep.groups import series_names
from mdpl.train.run import main


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_arrows) -> Path:
    return make_arrows(tmp_path_factory.mktemp("food101"), "food101")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory, tiny_config) -> Path:
    """One short fine-tune shared by the tests below; returns its run folder."""
    out = tmp_path_factory.mktemp("run")
    main(tiny_config("food101", data, out))
    [run] = (out / "result").iterdir()
    return run / "version_0"


def test_fine_tune_logs_and_checkpoints(trained, read_metrics, last_value):
    assert trained.parent.name == "mdpl_finetune_food101_seed42_from_"  # official naming, load_path ""
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and len(ckpts) == 2  # the best by val/the_metric and the last
    rows = read_metrics(trained)
    assert 0 <= last_value(rows, "val/the_metric") <= 1
    assert last_value(rows, "food101/val/accuracy") == last_value(rows, "val/the_metric")
    assert any(p.name.startswith("events.out.tfevents") for p in trained.iterdir())
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # 28 train samples, batch 4 -> 7 batches; accumulation 8 // 4 = 2 -> a step every 2 batches and at the
    # epoch's last batch: 4 optimizer steps per epoch
    assert ckpt["global_step"] == 8 and ckpt["epoch"] == 1
    assert ckpt["hyper_parameters"]["config"]["hidden_size"] == 32
    assert not any(k.startswith("task_metrics") for k in ckpt["state_dict"])


def test_test_only_logs_test_metrics_and_appends_records(trained, data, tmp_path, tiny_config, read_metrics):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    cfg = tiny_config(
        "food101",
        data,
        tmp_path,
        test_only=True,
        load_path=ckpt,
        test_ratio=0.5,
        test_type="both",
        test_exp_name="tiny",
    )
    [metrics] = main(cfg)
    assert set(metrics) == {"food101/test/loss", "food101/test/accuracy", "test/the_metric"}
    record = tmp_path / "records" / "food101" / "food101_tiny_on_missing_both"
    assert record.read_text() == f"missing ratio: 0.5, Accuracy: {metrics['food101/test/accuracy'] * 100:.2f}\n"
    main(cfg)  # a second evaluation appends a second line
    assert len(record.read_text().splitlines()) == 2
    [run] = (tmp_path / "result").iterdir()  # the load_path stem, then the test setting
    assert run.name == "mdpl_finetune_food101_seed42_from_last_test_tiny_missing_both_0.5"
    assert sorted(p.name for p in run.iterdir()) == ["version_0", "version_1"]  # one version per evaluation
    assert "val/the_metric" not in read_metrics(run / "version_0")[0]  # test metrics are logged as test/*


def test_resume_continues_step_count(trained, data, tmp_path, tiny_config):
    cfg = tiny_config("food101", data, tmp_path, resume_from=str(trained / "checkpoints" / "last.ckpt"), max_epoch=3)
    main(cfg)
    [run] = (tmp_path / "result").iterdir()
    assert run.name == "mdpl_finetune_food101_seed42_from_"  # resume_from does not name the run
    ckpt = torch.load(run / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12 and ckpt["epoch"] == 2  # one more epoch of 4 optimizer steps
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 12  # the scheduler resumed too


@pytest.fixture(scope="module")
def second_run(data, tmp_path_factory, tiny_config) -> Path:
    """Another short fine-tune (another seed) in another run folder: its checkpoint is also called last.ckpt."""
    out = tmp_path_factory.mktemp("run2")
    main(tiny_config("food101", data, out, seed=7, max_epoch=1))
    [run] = (out / "result").iterdir()
    return run / "version_0"


def test_sweep_writes_csv_markdown_and_plot(trained, second_run, data, tmp_path, tiny_config):
    ckpt, other = str(trained / "checkpoints" / "last.ckpt"), str(second_run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="same checkpoint more than once"):
        sweep(tiny_config("food101", data, tmp_path / "dup", sweep_paths=[ckpt, ckpt], sweep_ratios=[0.0]))
    cfg = tiny_config(
        "food101",
        data,
        tmp_path,
        sweep_paths=[ckpt, other],
        sweep_types=["text", "image"],
        sweep_ratios=[0.0, 1.0],
        hidden_size=768,
    )  # hidden_size comes from the checkpoint
    out = sweep(cfg)
    assert out == tmp_path / "result" / "mdpl_finetune_food101_seed42_sweep" / "version_0"
    rows = (out / "sweep.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2 and rows[0].startswith("checkpoint,prompt_method,backbone,label,missing_type")
    table = (out / "sweep.md").read_text()
    lines = table.splitlines()
    labels = [c.strip() for c in lines[2].split("|")[2:-1]]
    # two checkpoints of the same method, both last.ckpt: the labels tell their run folders apart
    a, b = (f"mdpl:{p.parent.name}/version_0/checkpoints/last" for p in (trained, second_run))
    assert labels == [f"{a}/text", f"{a}/image", f"{b}/text", f"{b}/image"]
    assert len(set(labels)) == 4
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # ratio 0 of every type is the same complete test set: same value per checkpoint
    ratio0 = [c.strip() for c in lines[4].split("|")[2:-1]]
    assert ratio0[0] == ratio0[1] and ratio0[2] == ratio0[3]
    # distinct lines: the csv holds every (checkpoint, type, ratio) once
    lines_csv = list(csv.DictReader(rows))
    keys = ("checkpoint", "prompt_method", "label", "missing_type", "missing_ratio")
    assert len({tuple(r[k] for k in keys) for r in lines_csv}) == 8


def test_series_names_are_the_method_plus_a_distinguishing_path_suffix_when_methods_repeat(tmp_path):
    assert series_names(["a/best.ckpt", "b/best.ckpt"], ["mdpl", "map"]) == ["mdpl", "map"]
    run_a, run_b = (str(tmp_path / r / "version_0" / "checkpoints" / "last.ckpt") for r in ("runA", "runB"))
    names = series_names([run_a, run_b], ["mdpl", "mdpl"])
    assert names[0] != names[1]
    assert names == ["mdpl:runA/version_0/checkpoints/last", "mdpl:runB/version_0/checkpoints/last"]
    assert series_names(["a/x.ckpt", "a/y.ckpt", "a/z.ckpt"], ["mdpl", "mdpl", "map"]) == ["mdpl:x", "mdpl:y", "map"]
    with pytest.raises(ValueError, match="same checkpoint more than once"):
        series_names([run_a, run_a], ["mdpl", "mdpl"])
    with pytest.raises(ValueError, match="same checkpoint more than once"):  # the same file by another path
        series_names(
            [run_a, str(tmp_path / "runA" / "version_0" / ".." / "version_0" / "checkpoints" / "last.ckpt")],
            ["mdpl", "mdpl"],
        )


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch, tiny_config):
    from mdpl.train.module import TaskModule

    forward = TaskModule.forward

    def nan_in_second_epoch(self, batch):
        out = forward(self, batch)
        if self.training and self.current_epoch == 1:
            out["food101_loss"] = out["food101_loss"] * float("nan")
        return out

    monkeypatch.setattr(TaskModule, "forward", nan_in_second_epoch)
    with pytest.raises(FloatingPointError, match="training loss is nan at epoch 1"):
        main(tiny_config("food101", data, tmp_path))
    [run] = (tmp_path / "result").iterdir()
    ckpt = torch.load(run / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "updates, error, message",
    [
        (dict(per_gpu_batchsize=0), ConfigError, "per_gpu_batchsize=0"),
        (dict(batch_size=10), ConfigError, "batch_size=10 is not a multiple"),
        (dict(data_root="/nonexistent/arrows"), FileNotFoundError, "data_root='/nonexistent/arrows'"),
        (dict(load_path="/nonexistent/x.ckpt"), FileNotFoundError, "load_path='/nonexistent/x.ckpt'"),
        (dict(test_only=True), ConfigError, "test_only=True needs load_path"),
        (dict(precision="fp8"), ConfigError, "precision='fp8'"),
    ],
)
def test_bad_config_fails_before_any_work(data, tmp_path, updates, error, message, tiny_config):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        main(tiny_config("food101", data, tmp_path, **updates))
    assert not (tmp_path / "result").exists() and not (tmp_path / "tables").exists()


def test_missing_arrow_file_names_it_and_the_make_arrow_command(data, tmp_path, tiny_config):
    root = tmp_path / "arrows"
    shutil.copytree(data, root)
    (root / "food101_val.arrow").unlink()
    with pytest.raises(FileNotFoundError, match=r"food101_val\.arrow.*make_arrow\.py --dataset food101"):
        main(tiny_config("food101", root, tmp_path))


def test_checkpoint_of_another_task_fails_before_training(trained, tmp_path, make_arrows, tiny_config):
    hate = make_arrows(tmp_path / "hate", "hatememes", samples=6)
    cfg = tiny_config("hatememes", hate, tmp_path, test_only=True, load_path=str(trained / "checkpoints" / "last.ckpt"))
    with pytest.raises(ConfigError, match=r"trained for task\(s\) \['food101'\] but the config's .* \['hatememes'\]"):
        main(cfg)
    assert not (tmp_path / "result").exists()


def test_precision_16_on_cpu_warns_and_runs_32():
    from mdpl.config import make_config
    from mdpl.train.settings import Settings
    from mdpl.train.trainer import precision

    def settings(value):
        return Settings.from_config(
            make_config("task_finetune_food101", per_gpu_batchsize=4, num_gpus=0, cpu_processes=1, precision=value)
        )

    with pytest.warns(UserWarning, match="precision=16 needs a GPU"):
        assert precision(settings(16)) == "32-true"
    assert precision(settings("bf16")) == "bf16-mixed"


def test_bf16_autocast_fine_tune_on_cpu(data, tmp_path, tiny_config, read_metrics, last_value):
    main(tiny_config("food101", data, tmp_path, precision="bf16", max_epoch=1))
    [run] = (tmp_path / "result").iterdir()
    assert 0 <= last_value(read_metrics(run / "version_0"), "val/the_metric") <= 1
