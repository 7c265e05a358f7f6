"""The `tiny` size recipe: it composes with every task config, and on synthetic data each task learns from
each modality alone (the README's "Small runs on the CPU" commands, run through make_config + main)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdpl.config import TINY, make_config
from mdpl.data.synthetic import generate
from mdpl.data.writers import WRITERS, convert
from mdpl.train.run import main

BOTH = {"train": "both", "val": "both", "test": "both"}
# task: (named config, synthetic generator and --classes, the metric, chance, the margin a modality must clear)
CASES = {
    "food101": ("task_finetune_food101", "food101", 10, "food101/test/accuracy", 0.10, 0.40),
    "mmimdb": ("task_finetune_mmimdb", "mmimdb", 4, "mmimdb/test/f1_macro", 0.0, 0.50),
    "hatememes": ("task_finetune_hatememes", "hateful_memes", 2, "hatememes/test/auroc", 0.5, 0.25),
}


def test_tiny_sets_sizes_and_cpu_settings_only():
    assert not {"datasets", "loss_names", "exp_name", "missing_ratio", "missing_type"} & set(TINY)
    assert not any(key.endswith("_class_num") for key in TINY)
    for named in ("task_finetune_food101", "task_finetune_mmimdb_map", "task_finetune_hatememes"):
        c = make_config(named, "tiny")
        assert c["hidden_size"] == TINY["hidden_size"] and c["num_gpus"] == 0
        assert c["datasets"] == make_config(named)["datasets"]


def test_tiny_before_a_task_config_is_an_error():
    with pytest.raises(ValueError, match="'tiny' must come after 'task_finetune_mmimdb'"):
        make_config("tiny", "task_finetune_mmimdb")


# (task, backbone, method): MDPL on ViLT (the task configs) and DCP on CLIP (the _dcp configs) on every task; the
# prompt-free model, MAP and MDPL on CLIP on Food-101. Every pair on every task (about 10 more minutes on 2 cores)
# would not fit the suite's time budget; `run.py compare` trains all seven pairs on Food-101.
LEARNERS = [
    *((task, "vilt", "mdpl") for task in CASES),
    *((task, "clip", "dcp") for task in CASES),
    ("food101", "clip", "none"),
    ("food101", "clip", "map"),
    ("food101", "clip", "mdpl"),
]


@pytest.mark.slow
@pytest.mark.parametrize("task,backbone,method", LEARNERS, ids=[f"{t}-{m}@{b}" for t, b, m in LEARNERS])
def test_tiny_learns_from_each_modality_alone(task, backbone, method, tmp_path: Path):
    named, generator, classes, metric, chance, margin = CASES[task]
    named += "_dcp" if method == "dcp" else ""
    generate(generator, tmp_path / "raw", samples=300, classes=classes, side_range=(48, 96))
    convert(WRITERS[generator], tmp_path / "raw", tmp_path / "arrows")
    common = dict(data_root=str(tmp_path / "arrows"), log_dir=str(tmp_path / "result"),
                  missing_table_root=str(tmp_path / "tables") + "/", missing_type=BOTH, backbone=backbone,
                  prompt_method=method)  # fmt: skip
    if task == "food101":
        common["food101_class_num"] = classes
    main(make_config(named, "tiny", **common))
    [ckpt] = (tmp_path / "result").glob("*/version_0/checkpoints/last.ckpt")
    scores = {}
    for missing in ("image", "text"):  # every test sample loses that modality
        evaluation = dict(test_only=True, load_path=str(ckpt), test_type=missing, test_ratio=1.0)
        [metrics] = main(make_config(named, "tiny", **common, **evaluation))
        scores[missing] = metrics[metric]
    assert scores["image"] > chance + margin and scores["text"] > chance + margin, scores
