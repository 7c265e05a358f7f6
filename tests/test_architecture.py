"""The architecture's contracts: checkpoints need no other file to load, evaluation rebuilds the model from
the checkpoint's own config (test_only and sweep alike), a disagreeing model key on the command line is an
error, and parameter names are the official flat ones whatever the prompt method."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mdpl.config import make_config
from mdpl.modules import PromptedViLT, TaskModule
from mdpl.reference import small_config
from mdpl.settings import ConfigError, Settings
from mdpl.sweep import sweep
from mdpl.train import main

BACKBONE = ("text_embeddings.", "token_type_embeddings.", "transformer.")


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_arrows) -> Path:
    return make_arrows(tmp_path_factory.mktemp("food101"), "food101")


def _run_folder(out: Path) -> Path:
    [run] = (out / "result").iterdir()
    return run / "version_0"


# ---- checkpoints load without the pre-trained file


def test_load_from_checkpoint_needs_no_pretrained_file(data, tmp_path, tiny_config):
    # a synthetic pre-trained ViLT: the backbone of a tiny model without prompts
    source = tiny_config("food101", data, tmp_path / "source", prompt_method="none")
    torch.manual_seed(11)
    backbone = {
        k: v for k, v in PromptedViLT(Settings.from_config(source).model).state_dict().items() if k.startswith(BACKBONE)
    }
    pretrained = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": backbone}, pretrained)

    out = tmp_path / "fit"
    main(tiny_config("food101", data, out, load_path=str(pretrained), max_epoch=1))
    run = _run_folder(out)
    assert run.parent.name == "finetune_food101_both111_seed42_from_pretrained"  # the stem, no extension
    ckpt_path = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["config"]["load_path"] == str(pretrained)
    for k, v in backbone.items():  # the frozen backbone is the pre-trained one
        assert torch.equal(saved["state_dict"][k], v), k

    pretrained.unlink()
    module = TaskModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    own = module.state_dict()
    assert set(own) == set(saved["state_dict"])
    for k, v in saved["state_dict"].items():
        assert torch.equal(own[k], v), k
    assert module.settings.model.prompt_method == "mdpl" and module.settings.run.load_path == str(pretrained)


# ---- evaluation rebuilds the model from the checkpoint


@pytest.fixture(scope="module")
def layer1(data, tmp_path_factory, tiny_config) -> str:
    """last.ckpt of a tiny run with generative prompts at layer 1 only (the default is [0, 1])."""
    out = tmp_path_factory.mktemp("layer1")
    main(tiny_config("food101", data, out, gen_prompt_layers=[1], max_epoch=1))
    ckpt = _run_folder(out) / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["config"]["gen_prompt_layers"] == [1]
    assert "gen_t_prompt_memory.0.prompt_memory" in saved["state_dict"]
    assert "gen_t_prompt_memory.1.prompt_memory" not in saved["state_dict"]
    return str(ckpt)


def test_test_only_with_data_keys_only_matches_the_sweep(layer1, data, tmp_path, tiny_config):
    data_keys = {
        "test_only",
        "load_path",
        "test_type",
        "test_ratio",
        "data_root",
        "log_dir",
        "records_root",
        "missing_table_root",
    }
    cfg = tiny_config(
        "food101", data, tmp_path / "test", test_only=True, load_path=layer1, test_type="both", test_ratio=0.5
    )
    assert cfg["gen_prompt_layers"] == [0, 1]  # the config's default; the checkpoint's [1] is used
    [metrics] = main(cfg, command_line=data_keys)

    swept = tiny_config(
        "food101", data, tmp_path / "sweep", sweep_paths=[layer1], sweep_types=["both"], sweep_ratios=[0.5]
    )
    out = sweep(swept, command_line={"sweep_paths", "sweep_types", "sweep_ratios", "data_root", "log_dir"})
    with open(out / "sweep.csv") as f:
        [row] = list(csv.DictReader(f))
    assert (row["missing_type"], float(row["missing_ratio"])) == ("both", 0.5)
    assert float(row["the_metric"]) == pytest.approx(metrics["test/the_metric"], abs=1e-6)
    assert float(row["food101/test/loss"]) == pytest.approx(metrics["food101/test/loss"], abs=1e-5)


def test_a_disagreeing_model_key_on_the_command_line_is_an_error(layer1, data, tmp_path, tiny_config):
    cfg = tiny_config("food101", data, tmp_path, test_only=True, load_path=layer1, gen_prompt_layers=[0, 1])
    with pytest.raises(ConfigError, match=r"gen_prompt_layers=\[0, 1\].*gen_prompt_layers=\[1\]"):
        main(cfg, command_line={"test_only", "load_path", "gen_prompt_layers"})
    assert not (tmp_path / "result").exists()
    swept = tiny_config("food101", data, tmp_path, sweep_paths=[layer1], sweep_ratios=[0.5], gen_prompt_layers=[0, 1])
    with pytest.raises(ConfigError, match=r"gen_prompt_layers=\[0, 1\].*gen_prompt_layers=\[1\]"):
        sweep(swept, command_line={"sweep_paths", "gen_prompt_layers"})
    assert not (tmp_path / "result").exists()


# ---- configuration


def test_mdpl_with_attention_prompts_is_an_error():
    config = make_config("task_finetune_food101", per_gpu_batchsize=4, prompt_type="attention")
    with pytest.raises(ConfigError, match="prompt_type"):
        Settings.from_config(config)
    # MAP's prefix prompts are fine
    Settings.from_config(make_config("task_finetune_food101_map", per_gpu_batchsize=4, prompt_type="attention"))


# ---- parameter names


COMMON = {"text_embeddings", "token_type_embeddings", "transformer", "pooler", "food101_classifier"}
PARTS = {
    "mdpl": {
        "gen_t_prompt_memory",
        "gen_v_prompt_memory",
        "shared_missing_t",
        "shared_missing_v",
        "bottleneck_texts",
        "bottleneck_images",
    },
    "map": {"complete_prompt", "missing_text_prompt", "missing_img_prompt"},
    "none": set(),
}
NAMES = {
    "mdpl": [
        "gen_t_prompt_memory.0.prompt_memory",
        "gen_t_prompt_memory.1.prompt_keys",
        "gen_v_prompt_memory.1.prompt_memory",
        "shared_missing_t.0",
        "shared_missing_v.1",
        "bottleneck_texts.0.0.weight",
        "bottleneck_images.1.2.bias",
    ],
    "map": ["complete_prompt", "missing_text_prompt", "missing_img_prompt"],
    "none": [],
}


@pytest.mark.parametrize("method", ["mdpl", "map", "none"])
def test_state_dict_keys_are_the_official_flat_names(method):
    config = small_config(prompt_method=method, prompt_layers=[0, 1])
    model = PromptedViLT(Settings.from_config(config).model)
    keys = set(model.state_dict())
    assert not any(k.startswith(("prompts.", "model.")) for k in keys)
    assert {k.split(".")[0] for k in keys} == COMMON | PARTS[method]
    for name in NAMES[method] + [
        "pooler.dense.weight",
        "food101_classifier.3.weight",
        "transformer.blocks.0.attn.qkv.weight",
        "text_embeddings.word_embeddings.weight",
        "token_type_embeddings.weight",
    ]:
        assert name in keys, name
    # the Lightning module holds the model's parameters under the same names
    module = TaskModule(config, model)
    assert set(module.state_dict()) == keys
    assert {n for n, _ in module.named_parameters()} == {n for n, _ in model.named_parameters()}
    # the prompt part's pieces are reachable both ways and are the same objects
    for name in PARTS[method]:
        assert getattr(model.prompts, name) is getattr(model, name)
