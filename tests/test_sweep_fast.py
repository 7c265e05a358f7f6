"""The sweep's single pass over the test split (mdpl.sweep_loader) gives exactly the metrics of the per-point
Lightning sweep and of test_only runs: same batches, same random numbers per point (patch_order="random" with a
max_image_len that makes each forward draw a random subset of patches), for MDPL and MAP, with and without
loader workers, and on MM-IMDb (several plots per movie)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mdpl import sweep as sweep_module
from mdpl import sweep_loader
from mdpl.datamodules import build_collator
from mdpl.datasets import build_dataset
from mdpl.settings import Settings
from mdpl.sweep import sweep
from mdpl.sweep_loader import GridCollator, GridTestSet, inside_masks, point_batch
from mdpl.train import main

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = dict(sweep_types=["text", "image", "both"], sweep_ratios=[0.0, 0.5, 1.0])
# every forward draws: a random subset of 2 of each image's 4 or 6 patches
RANDOM = dict(patch_order="random", max_image_len=2)
COMMAND_LINE = {"sweep_paths", "sweep_types", "sweep_ratios", "patch_order", "max_image_len", "num_workers"}
TEST_ONLY_LINE = {"test_only", "load_path", "test_type", "test_ratio", "patch_order", "max_image_len", "num_workers"}
NOT_METRICS = {"checkpoint", "prompt_method", "label", "missing_type", "missing_ratio", "group", "seed"}


def _last(out: Path) -> str:
    [run] = (out / "result").iterdir()
    return str(run / "version_0" / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def food101(tmp_path_factory, make_arrows, tiny_config) -> tuple[Path, dict[str, str]]:
    """(data_root, {"mdpl": last.ckpt, "map": last.ckpt}) of one-epoch tiny runs."""
    root = tmp_path_factory.mktemp("fast_food101")
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
    return {k: float(v) for k, v in row.items() if k not in NOT_METRICS and k not in ("effective_missing_rate",
                                                                                      "test_samples")}  # fmt: skip


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("method", ["mdpl", "map"])
def test_one_pass_equals_the_per_point_sweep_and_test_only_runs(food101, tmp_path, tiny_config, method, workers):
    data, ckpts = food101
    named = "task_finetune_food101_map" if method == "map" else None
    shared = dict(named=named, missing_table_root=str(tmp_path / "tables") + "/", num_workers=workers, **RANDOM)
    config = tiny_config("food101", data, tmp_path / "fast", sweep_paths=[ckpts[method]], **GRID, **shared)
    fast = _rows(sweep(config, COMMAND_LINE))
    slow = _rows(sweep({**config, "log_dir": str(tmp_path / "slow")}, COMMAND_LINE, fast=False))
    assert len(fast) == 9
    assert fast == slow  # every column, metrics to the last bit (floats written with repr)
    assert {r["food101/test/loss"] for r in fast if r["missing_type"] == "text"} != {fast[0]["food101/test/loss"]}

    for missing_type, ratio in (("both", 0.5), ("image", 1.0)):
        [metrics] = main(
            tiny_config(
                "food101",
                data,
                tmp_path / "test_only",
                test_only=True,
                load_path=ckpts[method],
                test_type=missing_type,
                test_ratio=ratio,
                **shared,
            ),  # fmt: skip
            command_line=TEST_ONLY_LINE,
        )
        [row] = [r for r in fast if r["missing_type"] == missing_type and float(r["missing_ratio"]) == ratio]
        assert _metrics(row) == {"the_metric": metrics["test/the_metric"]} | {
            k: v for k, v in metrics.items() if k != "test/the_metric"
        }


def test_two_checkpoints_share_one_pass_and_keep_their_own_rows(food101, tmp_path, tiny_config, monkeypatch):
    data, ckpts = food101
    paths = [ckpts["mdpl"], ckpts["map"]]
    config = tiny_config(
        "food101", data, tmp_path, sweep_paths=paths, sweep_types=["both", "text"], sweep_ratios=[0.5, 1.0], **RANDOM
    )
    slow = _rows(sweep({**config, "log_dir": str(tmp_path / "slow")}, COMMAND_LINE, fast=False))

    def no_trainer(*args, **kwargs):
        raise AssertionError("the single pass builds no Lightning Trainer")

    passes = []
    original = sweep_loader.evaluate_grid

    def counted(*args, **kwargs):
        passes.append(len(args[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "build_trainer", no_trainer)
    monkeypatch.setattr(sweep_loader, "evaluate_grid", counted)
    fast = _rows(sweep(config, COMMAND_LINE))
    assert passes == [2]  # both checkpoints in one pass over the test split
    assert fast == slow
    assert [r["prompt_method"] for r in fast] == ["mdpl"] * 4 + ["map"] * 4
    assert (tmp_path / "result").is_dir()
    out = next((tmp_path / "result").iterdir()) / "version_0"
    for name in ("sweep.csv", "sweep_summary.csv", "sweep.md", "sweep.png", "config.json"):
        assert (out / name).is_file(), name


def test_random_test_transforms_fall_back_to_lightning_with_a_note(food101, tmp_path, tiny_config, capsys):
    data, ckpts = food101
    config = tiny_config(
        "food101",
        data,
        tmp_path,
        sweep_paths=[ckpts["mdpl"]],
        sweep_types=["image"],
        sweep_ratios=[0.5],
        val_transform_keys=["pixelbert_randaug"],
    )
    [row] = _rows(sweep(config, {"sweep_paths", "val_transform_keys"}))
    out = capsys.readouterr().out
    assert "sweep: testing each point with Lightning, not in one pass (val_transform_keys" in out
    assert 0 <= float(row["the_metric"]) <= 1


def test_point_batches_equal_the_collated_test_batches(food101, tmp_path, tiny_config):
    """point_batch(GridCollator batch) == Collator(ArrowDataset items) for each of several missing tables."""
    data, _ = food101
    settings = Settings.from_config(tiny_config("food101", data, tmp_path))
    part = build_dataset(settings, "test")
    n = len(part.texts)
    tables = [torch.zeros(n), torch.tensor([1.0, 2.0] * (n // 2) + [2.0] * (n % 2)), torch.full((n,), 2.0)]
    grid = GridTestSet([part], [[t] for t in tables])
    collate = GridCollator(build_collator(settings))
    batch = collate([grid[j] for j in range(len(grid))])
    inside = inside_masks(batch)
    for u, table in enumerate(tables):
        part.missing = table.long().tolist()
        want = build_collator(settings)([part[j] for j in range(len(part))])
        got = point_batch(batch, batch["codes"][u], batch["codes"][u].tolist(), inside)
        assert set(got) == set(want)
        for key, value in want.items():
            if key == "image":
                assert all(torch.equal(a, b) for a, b in zip(got[key], value)), u
            elif isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), (u, key)
            else:
                assert got[key] == value, (u, key)


def test_mmimdb_one_point_equals_the_per_point_sweep_and_test_only(tmp_path, make_arrows, tiny_config):
    data = make_arrows(tmp_path / "data", "mmimdb", samples=20)
    main(tiny_config("mmimdb", data, tmp_path / "fit", max_epoch=1))
    ckpt = _last(tmp_path / "fit")
    test = build_dataset(Settings.from_config(tiny_config("mmimdb", data, tmp_path / "count")), "test")
    assert len(test) > len(test.texts)  # several plots per movie
    shared = dict(missing_table_root=str(tmp_path / "tables") + "/", **RANDOM)
    config = tiny_config(
        "mmimdb", data, tmp_path / "fast", sweep_paths=[ckpt], sweep_types=["text"], sweep_ratios=[0.5], **shared
    )
    [fast] = _rows(sweep(config, COMMAND_LINE))
    [slow] = _rows(sweep({**config, "log_dir": str(tmp_path / "slow")}, COMMAND_LINE, fast=False))
    assert fast == slow
    assert int(fast["test_samples"]) == len(test)
    [metrics] = main(
        tiny_config(
            "mmimdb",
            data,
            tmp_path / "test_only",
            test_only=True,
            load_path=ckpt,
            test_type="text",
            test_ratio=0.5,
            **shared,
        ),  # fmt: skip
        command_line=TEST_ONLY_LINE,
    )
    assert "mmimdb/test/f1_samples" in metrics
    assert _metrics(fast) == {"the_metric": metrics["test/the_metric"]} | {
        k: v for k, v in metrics.items() if k != "test/the_metric"
    }


def test_bf16_autocast_point_equals_the_per_point_sweep(food101, tmp_path, tiny_config):
    data, ckpts = food101
    config = tiny_config(
        "food101", data, tmp_path, sweep_paths=[ckpts["mdpl"]], sweep_types=["both"], sweep_ratios=[0.5],
        precision="bf16", **RANDOM,
    )  # fmt: skip
    fast = _rows(sweep(config, COMMAND_LINE | {"precision"}))
    slow = _rows(sweep({**config, "log_dir": str(tmp_path / "slow")}, COMMAND_LINE | {"precision"}, fast=False))
    assert fast == slow


def test_several_processes_rule_out_the_single_pass(tmp_path, tiny_config):
    from mdpl.sweep_loader import obstacle

    one = Settings.from_config(tiny_config("food101", tmp_path, tmp_path))
    assert obstacle(one, transforms_random=False) is None
    assert "val_transform_keys" in obstacle(one, transforms_random=True)
    two = Settings.from_config(tiny_config("food101", tmp_path, tmp_path, cpu_processes=2))
    assert "cpu_processes=2" in obstacle(two, transforms_random=False)
