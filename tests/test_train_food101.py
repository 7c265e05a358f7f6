"""Training, evaluation, resume, sweep and bad input on synthetic Food-101 with a tiny ViLT (CPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mdpl.sweep import sweep
from mdpl.train import main
from train_helpers import last_value, make_arrows, read_metrics, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_arrows(tmp_path_factory.mktemp("food101"), "food101")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """One short fine-tune shared by the tests below; returns its run folder."""
    out = tmp_path_factory.mktemp("run")
    main(tiny_config("food101", data, out))
    [run] = (out / "result").iterdir()
    return run / "version_0"


def test_fine_tune_logs_and_checkpoints(trained):
    assert trained.parent.name == "finetune_food101_both111_seed42_from_"  # official naming, load_path ""
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


def test_test_only_logs_test_metrics_and_appends_records(trained, data, tmp_path):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    cfg = tiny_config("food101", data, tmp_path, test_only=True, load_path=ckpt, test_ratio=0.5,
                      test_type="both", test_exp_name="tiny")
    [metrics] = main(cfg)
    assert set(metrics) == {"food101/test/loss", "food101/test/accuracy", "test/the_metric"}
    record = tmp_path / "records" / "food101" / "food101_tiny_on_missing_both"
    assert record.read_text() == f"missing ratio: 0.5, Accuracy: {metrics['food101/test/accuracy'] * 100:.2f}\n"
    main(cfg)  # a second evaluation appends a second line
    assert len(record.read_text().splitlines()) == 2
    [run] = (tmp_path / "result").iterdir()
    assert run.name == "finetune_food101_both111_seed42_from_last"
    assert "val/the_metric" not in read_metrics(run / "version_0")[0]  # test metrics are logged as test/*


def test_resume_continues_step_count(trained, data, tmp_path):
    cfg = tiny_config("food101", data, tmp_path, resume_from=str(trained / "checkpoints" / "last.ckpt"), max_epoch=3)
    main(cfg)
    [run] = (tmp_path / "result").iterdir()
    ckpt = torch.load(run / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12 and ckpt["epoch"] == 2  # one more epoch of 4 optimizer steps
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 12  # the scheduler resumed too


def test_sweep_writes_csv_markdown_and_plot(trained, data, tmp_path):
    ckpt = str(trained / "checkpoints" / "last.ckpt")
    cfg = tiny_config("food101", data, tmp_path, sweep_paths=[ckpt, ckpt], sweep_types=["text", "image"],
                      sweep_ratios=[0.0, 1.0], hidden_size=768)  # hidden_size comes from the checkpoint
    out = sweep(cfg)
    assert out == tmp_path / "result" / "finetune_food101_both111_seed42_sweep" / "version_0"
    rows = (out / "sweep.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2 and rows[0].startswith("checkpoint,prompt_method,label,missing_type")
    table = (out / "sweep.md").read_text()
    assert "| missing ratio | mdpl:last/text | mdpl:last/image |" in table.splitlines()[2]
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # ratio 0 of every type is the same complete test set: same value
    lines = table.splitlines()
    ratio0 = [c.strip() for c in lines[4].split("|")[2:-1]]
    assert len(set(ratio0)) == 1


def test_sweep_labels_lines_by_method_and_adds_the_stem_only_when_methods_repeat():
    from mdpl.sweep import _series_names

    assert _series_names([{"prompt_method": "mdpl", "load_path": "a/best.ckpt"},
                          {"prompt_method": "map", "load_path": "b/best.ckpt"}]) == ["mdpl", "map"]
    assert _series_names([{"prompt_method": "mdpl", "load_path": "a/x.ckpt"},
                          {"prompt_method": "mdpl", "load_path": "a/y.ckpt"}]) == ["mdpl:x", "mdpl:y"]


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    from mdpl.modules import MemPromptTransformer

    forward = MemPromptTransformer.forward

    def nan_in_second_epoch(self, batch):
        out = forward(self, batch)
        if self.training and self.current_epoch == 1:
            out["food101_loss"] = out["food101_loss"] * float("nan")
        return out

    monkeypatch.setattr(MemPromptTransformer, "forward", nan_in_second_epoch)
    with pytest.raises(FloatingPointError, match="training loss is nan at epoch 1"):
        main(tiny_config("food101", data, tmp_path))
    [run] = (tmp_path / "result").iterdir()
    ckpt = torch.load(run / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "updates, error, message",
    [
        (dict(per_gpu_batchsize=0), ValueError, "per_gpu_batchsize=0"),
        (dict(batch_size=10), ValueError, "batch_size=10 is not a multiple"),
        (dict(data_root="/nonexistent/arrows"), FileNotFoundError, "data_root='/nonexistent/arrows'"),
        (dict(load_path="/nonexistent/x.ckpt"), FileNotFoundError, "load_path='/nonexistent/x.ckpt'"),
        (dict(test_only=True), ValueError, "test_only=True needs load_path"),
        (dict(precision="fp8"), ValueError, "precision='fp8'"),
    ],
)
def test_bad_config_fails_before_any_work(data, tmp_path, updates, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        main(tiny_config("food101", data, tmp_path, **updates))
    assert not (tmp_path / "result").exists() and not (tmp_path / "tables").exists()


def test_missing_arrow_file_names_it_and_the_make_arrow_command(data, tmp_path):
    root = tmp_path / "arrows"
    shutil.copytree(data, root)
    (root / "food101_val.arrow").unlink()
    with pytest.raises(FileNotFoundError, match=r"food101_val\.arrow.*make_arrow\.py --dataset food101"):
        main(tiny_config("food101", root, tmp_path))


def test_checkpoint_of_another_task_fails_before_training(trained, tmp_path):
    hate = make_arrows(tmp_path / "hate", "hatememes", samples=6)
    cfg = tiny_config("hatememes", hate, tmp_path, test_only=True, load_path=str(trained / "checkpoints" / "last.ckpt"))
    with pytest.raises(Exception, match="another task"):
        main(cfg)
    assert not (tmp_path / "result").exists()


def test_precision_16_on_cpu_warns_and_runs_32():
    from mdpl.train import precision

    with pytest.warns(UserWarning, match="precision=16 needs a GPU"):
        assert precision({"precision": 16, "num_gpus": 0, "cpu_processes": 1}) == "32-true"
    assert precision({"precision": "bf16", "num_gpus": 0, "cpu_processes": 1}) == "bf16-mixed"


def test_bf16_autocast_fine_tune_on_cpu(data, tmp_path):
    main(tiny_config("food101", data, tmp_path, precision="bf16", max_epoch=1))
    [run] = (tmp_path / "result").iterdir()
    assert 0 <= last_value(read_metrics(run / "version_0"), "val/the_metric") <= 1
