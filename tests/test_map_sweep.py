"""Comparing methods: MAP, MDPL and plain-ViLT checkpoints trained with their named configs (tiny, CPU)
are swept together, one line per method and missing type."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mdpl.sweep.grid import sweep
from mdpl.train.run import main

METHODS = {  # method -> (named config, extra updates)
    "map": ("task_finetune_food101_map", {}),
    "mdpl": ("task_finetune_food101", {}),
    "none": ("task_finetune_food101", {"prompt_method": "none"}),
}


@pytest.fixture(scope="module")
def config(tiny_config):
    def make(named: str, data: Path, out: Path, **updates) -> dict:
        return tiny_config("food101", data, out, named=named, **{"max_epoch": 1, **updates})

    return make


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, make_arrows, config) -> tuple[Path, dict[str, str]]:
    """One short fine-tune per method; returns (data_root, method -> last.ckpt)."""
    root = tmp_path_factory.mktemp("compare")
    data = make_arrows(root, "food101")
    out = {}
    for method, (named, updates) in METHODS.items():
        run_root = root / method
        main(config(named, data, run_root, **updates))
        [run] = (run_root / "result").iterdir()
        out[method] = str(run / "version_0" / "checkpoints" / "last.ckpt")
    return data, out


def test_map_training_updates_the_official_prompt_tensors(checkpoints):
    _, ckpts = checkpoints
    ckpt = torch.load(ckpts["map"], map_location="cpu", weights_only=False)
    saved = ckpt["hyper_parameters"]["config"]
    assert saved["prompt_method"] == "map" and saved["seed"] == 0
    assert saved["missing_type"] == {"train": "both", "val": "both", "test": "both"}
    sd = ckpt["state_dict"]
    initial = torch.zeros(len(saved["prompt_layers"]), saved["prompt_length"], saved["hidden_size"])
    initial[:, 0] = 1  # complete_prompt starts as zeros with its first row of ones
    assert sd["complete_prompt"].shape == initial.shape and not torch.equal(sd["complete_prompt"], initial)
    assert not any(k.startswith(("gen_", "shared_", "bottleneck_")) for k in sd)


def test_one_sweep_draws_a_line_per_method_and_type(checkpoints, config, tmp_path):
    data, ckpts = checkpoints
    cfg = config(
        "task_finetune_food101",
        data,
        tmp_path,
        sweep_paths=[ckpts["map"], ckpts["mdpl"], ckpts["none"]],
        sweep_types=["text", "image"],
        sweep_ratios=[0.0, 0.5],
    )
    out = sweep(cfg)
    lines = (out / "sweep.md").read_text().splitlines()
    labels = [c.strip() for c in lines[2].split("|")[2:-1]]
    assert labels == ["map/text", "map/image", "mdpl/text", "mdpl/image", "none/text", "none/image"]
    rows = (out / "sweep.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 2 * 2
    # ratio 0 is the complete test set for either type: each method's two lines start at the same value
    ratio0 = [c.strip() for c in lines[4].split("|")[2:-1]]
    assert ratio0[0] == ratio0[1] and ratio0[2] == ratio0[3] and ratio0[4] == ratio0[5]
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_official_checkpoints_without_a_saved_config_are_told_apart_by_their_keys(checkpoints, config, tmp_path):
    data, ckpts = checkpoints
    official = {}
    for method in ("map", "mdpl"):  # official checkpoints record no prompt_method
        sd = torch.load(ckpts[method], map_location="cpu", weights_only=False)["state_dict"]
        official[method] = str(tmp_path / f"official_{method}.ckpt")
        torch.save({"state_dict": sd}, official[method])
    cfg = config(
        "task_finetune_food101",
        data,
        tmp_path,
        sweep_paths=[official["map"], official["mdpl"]],
        sweep_types=["image"],
        sweep_ratios=[0.5],
    )
    lines = (sweep(cfg) / "sweep.md").read_text().splitlines()
    assert [c.strip() for c in lines[2].split("|")[2:-1]] == ["map/image", "mdpl/image"]
