"""The architecture's contracts: checkpoints need no other file to load, evaluation rebuilds the model from
the checkpoint's own config (test_only and sweep alike), a disagreeing model key on the command line is an
error, and files hold the official flat parameter names whatever the prompt method (the model's own names are
internal: backbone.*, prompts.*, {task}_classifier.*)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mdpl.config import make_config
from mdpl.errors import ConfigError
from mdpl.model.model import PromptedModel
from mdpl.sweep.grid import sweep
from mdpl.train.module import TaskModule
from mdpl.train.run import main
from mdpl.train.settings import Settings
from reference.common import small_config

BACKBONE = ("text_embeddings.", "token_type_embeddings.", "transformer.")  # official (file) names


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
    model = PromptedModel(Settings.from_config(source).model)
    backbone = {k: v for k, v in model.official_state_dict().items() if k.startswith(BACKBONE)}
    pretrained = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": backbone}, pretrained)

    out = tmp_path / "fit"
    main(tiny_config("food101", data, out, load_path=str(pretrained), max_epoch=1))
    run = _run_folder(out)
    assert run.parent.name == "mdpl_finetune_food101_seed42_from_pretrained"  # the stem, no extension
    ckpt_path = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert saved["hyper_parameters"]["config"]["load_path"] == str(pretrained)
    for k, v in backbone.items():  # the frozen backbone is the pre-trained one (the file holds official names)
        assert torch.equal(saved["state_dict"][k], v), k

    pretrained.unlink()
    module = TaskModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    own = module.model.official_state_dict()
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
def test_files_hold_the_official_flat_names(method):
    """Was: the model's state_dict keys are the official flat names (the prompt part registered inline). Now the
    model's own names are internal and official_state_dict() and checkpoints hold the official flat names."""
    config = small_config(prompt_method=method, prompt_layers=[0, 1])
    model = PromptedModel(Settings.from_config(config).model)
    keys = set(model.official_state_dict())
    assert not any(k.startswith(("prompts.", "model.", "backbone.")) for k in keys)
    assert {k.split(".")[0] for k in keys} == COMMON | PARTS[method]
    for name in NAMES[method] + [
        "pooler.dense.weight",
        "food101_classifier.3.weight",
        "transformer.blocks.0.attn.qkv.weight",
        "text_embeddings.word_embeddings.weight",
        "token_type_embeddings.weight",
    ]:
        assert name in keys, name
    # one official name per internal name, the same tensors, and from_official maps them back
    internal = model.state_dict()
    assert len(keys) == len(internal)
    pairs = zip(internal.values(), model.official_state_dict().values())
    assert all(a.data_ptr() == b.data_ptr() and a.shape == b.shape for a, b in pairs)
    assert list(model.from_official(model.official_state_dict())) == list(internal)
    # a checkpoint of the Lightning module holds the model's parameters under the same names, and loads back
    module = TaskModule(config, model)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == keys
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])  # strict
    assert {id(p) for p in module.parameters()} == {id(p) for p in model.parameters()}
    # the prompt part's pieces are the prompt method's children, named as in the files
    for name in PARTS[method]:
        assert getattr(model.prompts, name) is not None
        assert any(k.startswith(f"prompts.{name}") for k in internal), name


@pytest.mark.parametrize("method", ["mdpl", "map", "none"])
def test_eval_and_train_reach_every_submodule(method):
    """Was: the prompt part's pieces are registered on the model itself (reachable both ways). Now they are
    registered under model.prompts, so the model's and the Lightning module's eval() / train() reach them."""
    config = small_config(prompt_method=method, prompt_layers=[0, 1])
    model = PromptedModel(Settings.from_config(config).model)
    module = TaskModule(config, model)
    prompt_modules = list(model.prompts.modules())
    assert len(prompt_modules) == 1 + sum(1 for n, _ in model.named_modules() if n.startswith("prompts."))
    for top, mode in ((model, False), (model, True), (module, False), (module, True)):
        top.train(mode)
        assert all(m.training is mode for m in model.modules())
        assert all(m.training is mode for m in prompt_modules)
