"""benchmarks/throughput.py: the analytic FLOP count and a tiny-shape run of every mode."""

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from reference.common import SMALL

pytestmark = pytest.mark.usefixtures("one_thread")


def _load_script(name: str):
    """A benchmarks/ script as a module (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


throughput = _load_script("throughput")
# the small test model; the benchmark draws token ids from the tokenizers' real vocabularies
MODEL = {key: value for key, value in SMALL.items() if not key.endswith("vocab_size")}


def test_flop_count_by_hand():
    """2 layers, prompts (2 x 3 gen + 2 x 2 shared = 10 tokens) at layer 0 only."""
    c = throughput.make_config(
        "food101",
        hidden_size=8,
        mlp_ratio=4,
        num_layers=2,
        patch_size=2,
        gen_prompt_layers=[0],
        shared_prompt_layers=[0],
        gen_prompt_length=3,
        shared_prompt_length=2,
    )
    fwd, train = throughput.flops_per_sample(c, T=5, image_tokens=4, patches=3)
    N = 5 + 4 + 10
    lin, attn = 2 * N * (4 * 64 + 2 * 8 * 32), 4 * N * N * 8
    embed = 2 * 3 * 3 * 4 * 8
    assert fwd == embed + 2 * (lin + attn)
    assert train == fwd + 2 * (lin + 2 * attn)


def test_every_mode_runs_on_tiny_shapes(monkeypatch):
    monkeypatch.setitem(
        throughput.SHAPES, "food101", dict(text_len=8, image_hw=(64, 96), batch=2, real_text=(3, 5), classes=101)
    )
    args = argparse.Namespace(batch=2, steps=1, ref_steps=1, warmup=0, amp_dtype=None, count_ops=True)
    for mode in ["pruned", "unpruned", "pruned+trim", "reference"]:
        r = throughput.run_mode("food101", mode, args, torch.device("cpu"), MODEL)
        assert r["train"] > 0 and r["eval"] > 0 and r["ops"] > 0
        assert r["flops"][1] > r["flops"][0] > 0  # train > forward
    monkeypatch.setattr(throughput, "CLIP_SHAPE", dict(text_len=8, image_hw=(32, 32)))
    for mode in ["pruned:dcp@clip", "reference:dcp@clip", "pruned:map", "unpruned:none@clip"]:
        r = throughput.run_mode("food101", mode, args, torch.device("cpu"), MODEL)
        assert r["train"] > 0 and r["eval"] > 0 and r["flops"] is None
    with pytest.raises(SystemExit, match="'pruned\\+fast'"):
        throughput.run_mode("food101", "pruned+fast", args, torch.device("cpu"), MODEL)


def test_dataloader_benchmark_builds_its_config_with_make_config(tmp_path, make_arrows):
    """benchmarks/dataloader.py's loader on a tiny synthetic set (the script itself uses 512x384 images)."""
    from mdpl.config import make_config

    dataloader = _load_script("dataloader")
    data = make_arrows(tmp_path, "food101", samples=20)
    cfg = make_config(
        datasets=["Food101"],
        loss_names={"itm": 0, "mlm": 0, "food101": 1},
        data_root=str(data),
        missing_table_root=str(tmp_path / "t"),
        per_gpu_batchsize=2,
        batch_size=2,
        max_text_len=16,
        image_size=64,
        num_workers=0,
    )
    assert dataloader.samples_per_second(cfg) > 0
