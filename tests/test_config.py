"""The sacred configuration: official defaults, named configs, and `run.py print_config` anywhere."""

import subprocess
import sys
from pathlib import Path

import pytest

from mdpl.config import make_config

ROOT = Path(__file__).resolve().parents[1]

OFFICIAL_DEFAULTS = {
    "exp_name": "src",
    "seed": 42,
    "datasets": ["coco", "vg", "sbu", "gcc"],
    "batch_size": 4096,
    "test_ratio": None,
    "test_type": None,
    "test_exp_name": None,
    "fix_model": True,
    "missing_ratio": {"train": 0.7, "val": 0.7, "test": 0.7},
    "missing_type": {"train": "image", "val": "image", "test": "image"},
    "both_ratio": 0.5,
    "missing_table_root": "./datasets/missing_tables/",
    "simulate_missing": False,
    "prompt_type": "input",
    "learnt_p": True,
    "multi_layer_prompt": True,
    "gen_prompt_length": 16,
    "gen_prompt_layers": [0, 1, 2, 3, 4, 5],
    "shared_prompt_length": 16,
    "shared_prompt_layers": [0, 1, 2, 3, 4, 5],
    "mem_size": 16,
    "top_k": 5,
    "bottleneck_dim": 8,
    "train_transform_keys": ["pixelbert"],
    "val_transform_keys": ["pixelbert"],
    "image_size": 384,
    "max_image_len": -1,
    "patch_size": 32,
    "draw_false_image": 1,
    "image_only": False,
    "vqav2_label_size": 3129,
    "max_text_len": 40,
    "tokenizer": "bert-base-uncased",
    "vocab_size": 30522,
    "whole_word_masking": False,
    "mlm_prob": 0.15,
    "draw_false_text": 0,
    "vit": "vit_base_patch32_384",
    "hidden_size": 768,
    "num_heads": 12,
    "num_layers": 12,
    "mlp_ratio": 4,
    "drop_rate": 0.1,
    "optim_type": "adamw",
    "learning_rate": 1e-4,
    "weight_decay": 0.01,
    "decay_power": 1,
    "max_epoch": 100,
    "max_steps": 25000,
    "warmup_steps": 2500,
    "end_lr": 0,
    "lr_mult": 1,
    "get_recall_metric": False,
    "mmimdb_class_num": 23,
    "hatememes_class_num": 2,
    "food101_class_num": 101,
    "resume_from": None,
    "fast_dev_run": False,
    "val_check_interval": 1.0,
    "test_only": False,
    "finetune_first": False,
    "data_root": "",
    "log_dir": "result",
    "per_gpu_batchsize": 0,
    "num_gpus": 1,
    "num_nodes": 1,
    "load_path": "",
    "num_workers": 8,
    "precision": 16,
}
LOSS_KEYS = ["itm", "mlm", "mpp", "mppd", "vqa", "nlvr2", "irtr", "mmimdb", "hatememes", "food101"]


def test_every_official_key_at_its_default():
    cfg = make_config()
    for key, value in OFFICIAL_DEFAULTS.items():
        assert cfg[key] == value, key
    assert cfg["loss_names"] == {k: int(k in ("itm", "mlm")) for k in LOSS_KEYS}


def test_our_keys_default_to_official_behaviour():
    cfg = make_config()
    assert cfg["prompt_method"] == "mdpl"
    assert cfg["masked_query"] is False and cfg["fp32_similarity"] is False and cfg["trim_text"] is False
    assert cfg["patch_order"] == "random" and cfg["table_draw"] == "official"
    assert cfg["mmimdb_one_plot"] is False
    assert cfg["backbone"] == "vilt" and cfg["train_order"] == "official"  # official: train order seed 0


@pytest.mark.parametrize(
    "name, exp_name, datasets, task, lr, val_check, text_len",
    [
        ("task_finetune_mmimdb", "mdpl_finetune_mmimdb", ["mmimdb"], "mmimdb", 5e-3, 0.2, 1024),
        ("task_finetune_food101", "mdpl_finetune_food101", ["Food101"], "food101", 5e-3, 0.2, 512),
        ("task_finetune_hatememes", "mdpl_finetune_hatememes", ["Hatefull_Memes"], "hatememes", 1e-3, 0.11, 128),
    ],
)
def test_task_named_configs(name, exp_name, datasets, task, lr, val_check, text_len):
    cfg = make_config(name)
    assert (cfg["exp_name"], cfg["datasets"], cfg["learning_rate"]) == (exp_name, datasets, lr)
    assert (cfg["val_check_interval"], cfg["max_text_len"]) == (val_check, text_len)
    assert cfg["loss_names"] == {k: int(k == task) for k in LOSS_KEYS}
    assert (cfg["batch_size"], cfg["max_epoch"], cfg["max_steps"], cfg["warmup_steps"]) == (256, 20, None, 0.1)
    assert (cfg["draw_false_image"], cfg["weight_decay"]) == (0, 2e-2)
    # the task configs leave the missing-modality and prompt settings alone
    for key in ("missing_ratio", "missing_type", "gen_prompt_layers", "shared_prompt_layers", "top_k"):
        assert cfg[key] == OFFICIAL_DEFAULTS[key], key


def test_command_line_updates_override_named_configs():
    cfg = make_config("task_finetune_food101", per_gpu_batchsize=8, learning_rate=1e-3)
    assert cfg["per_gpu_batchsize"] == 8 and cfg["learning_rate"] == 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("in_git_repo", [False, True])
def test_print_config_from_any_folder(tmp_path, in_git_repo):
    if in_git_repo:  # a repository with no commit used to make sacred fail
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    out = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "print_config", "with", "task_finetune_food101"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "mdpl_finetune_food101" in out.stdout
