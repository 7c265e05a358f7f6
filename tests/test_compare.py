"""`run.py compare` (mdpl.sweep.compare): every backbone x method trained with every seed, one sweep whose lines are
the backbone x method groups averaged over the seeds, compare.md; a second command retrains nothing, an
unfinished run resumes; refusals come before anything is written. Tiny ViLT and CLIP (seconds per fit)."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import pytest

from mdpl.config import make_config
from mdpl.errors import ConfigError
from mdpl.sweep import compare as compare_module
from mdpl.sweep.compare import MARKER, compare, plan

SETUP = dict(compare_methods=["none", "map", "mdpl", "dcp"], compare_backbones=["vilt", "clip"], compare_seeds=[0, 1],
             prompt_length=6, sweep_ratios=[0.0, 0.5, 1.0], exp_name="cmp")  # fmt: skip
GROUPS = ["none", "map", "mdpl", "none@clip", "map@clip", "mdpl@clip", "dcp@clip"]  # DCP on ViLT skipped


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_arrows, tiny_config):
    """One comparison, trained and swept: (its config, the sweep folder)."""
    root = tmp_path_factory.mktemp("compare")
    config = tiny_config("food101", make_arrows(root, "food101"), root, **SETUP)
    return config, compare(config)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_one_line_per_backbone_and_method_over_its_seeds(setup):
    config, out = setup
    assert out.parent.parent == Path(config["log_dir"]) / "cmp_compare"
    rows = _rows(out / "sweep.csv")
    assert list(dict.fromkeys(r["group"] for r in rows)) == GROUPS
    for group in GROUPS:
        mine = [r for r in rows if r["group"] == group]
        assert sorted({r["seed"] for r in mine}) == ["0", "1"] and len({r["checkpoint"] for r in mine}) == 2
        assert {(r["prompt_method"], r["backbone"]) for r in mine} == {
            (group.split("@")[0], "clip" if "@" in group else "vilt")
        }
    assert {r["n"] for r in _rows(out / "sweep_summary.csv")} == {"2"}  # every point: mean ± std of 2 seeds
    assert (out / "sweep.png").stat().st_size > 0 and (out / "sweep.md").is_file()

    text = (out / "compare.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and " | 0, 1 | " in line]
    assert [tuple(line.split(" | ")[:2]) for line in table] == [
        ("| vilt", "none"), ("| vilt", "map"), ("| vilt", "mdpl"),
        ("| clip", "none"), ("| clip", "map"), ("| clip", "mdpl"), ("| clip", "dcp"),
    ]  # fmt: skip
    assert str(out / "sweep.md") in text
    # the whole-grid cell of mdpl@clip: each checkpoint's mean over every point, then mean ± std over the seeds
    per_checkpoint = {}
    for r in rows:
        if r["group"] == "mdpl@clip":
            per_checkpoint.setdefault(r["checkpoint"], []).append(float(r["the_metric"]))
    means = [statistics.mean(v) * 100 for v in per_checkpoint.values()]
    cell = table[5].rstrip(" |").rsplit(" | ", 1)[1]
    assert cell == f"{statistics.mean(means):.2f} ± {statistics.stdev(means):.2f}"


def test_each_run_is_trained_as_its_method_needs(setup):
    config, out = setup
    markers = sorted((out.parent.parent).glob(f"*/{MARKER}"))
    assert len(markers) == 14
    records = [json.loads(m.read_text()) for m in markers]
    assert all(r["finished"] and (m.parent / r["checkpoint"]).is_file() for m, r in zip(markers, records))
    dcp = [r["recipe"] for r in records if r["group"] == "dcp@clip"]
    assert [r["dcp_dynamic_prompts"] for r in dcp] == ["saved", "saved"]  # evaluated with their own prompts
    assert all(r["prompt_length"] == 6 for r in dcp)  # tiny's length already fits DCP
    assert {r["recipe"]["missing_type.train"] for r in records} == {config["missing_type"]["train"]}


def test_a_second_command_retrains_nothing(setup, monkeypatch, capsys):
    config, out = setup

    def no_training(config):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare_module, "train", no_training)
    again = compare(config)
    assert again.parent == out.parent and again != out  # a new sweep version, the same runs
    assert capsys.readouterr().out.count("finished earlier, reusing") == 14
    assert {r["checkpoint"] for r in _rows(again / "sweep.csv")} == {r["checkpoint"] for r in _rows(out / "sweep.csv")}


def test_an_unfinished_run_resumes_from_its_last_checkpoint(setup, monkeypatch):
    config, _ = setup
    marker = Path(config["log_dir"]) / "cmp_compare" / "clip_mdpl_seed1_from_" / MARKER
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "finished": False}))  # as a run killed after its last validation
    resumed = []
    real_train = compare_module.train

    def spy(config):
        resumed.append(config["resume_from"])
        return real_train(config)

    monkeypatch.setattr(compare_module, "train", spy)
    compare(config)
    assert resumed == [str(marker.parent / "version_0" / "checkpoints" / "last.ckpt")]
    assert json.loads(marker.read_text())["finished"]
    assert not (marker.parent / "version_1").exists()  # continued in its own folder


def test_a_run_folder_trained_otherwise_is_refused(setup):
    config, out = setup
    before = sorted(out.parent.iterdir())
    with pytest.raises(ConfigError, match=r"none seed 0 trained with other settings \(learning_rate=0\.001 there, "
                                          r"0\.002 now\).*another exp_name or log_dir"):  # fmt: skip
        compare({**config, "learning_rate": 2e-3})
    assert sorted(out.parent.iterdir()) == before


def test_dcp_on_vilt_is_skipped_and_dcp_gets_its_official_structure(capsys):
    """At the task config's prompt length 16 (MAP's), DCP runs take its official 36 and [0..5]; the rest keep 16."""
    _, runs = plan(make_config("task_finetune_food101", per_gpu_batchsize=8, compare_seeds=[3]))
    assert "skipping dcp on vilt" in capsys.readouterr().out
    lengths = {r.group: (r.settings.model.prompt_length, r.settings.model.prompt_layers, r.seed) for r in runs}
    assert lengths == {
        **{g: (16, (0, 1, 2, 3, 4, 5), 3) for g in ("none", "map", "mdpl", "none@clip", "map@clip", "mdpl@clip")},
        "dcp@clip": (36, (0, 1, 2, 3, 4, 5), 3),
    }
    assert {r.settings.model.dcp_dynamic_prompts for r in runs if r.group != "dcp@clip"} == {"official"}


REFUSALS = [
    (dict(compare_methods=["mdpl", "prompt"]), set(), r"compare_methods=\['mdpl', 'prompt'\]: expected a non-empty "
                                                      r"list of \('mdpl', 'map', 'none', 'dcp'\)"),  # fmt: skip
    (dict(compare_methods=[]), set(), r"compare_methods=\[\]: expected a non-empty list"),
    (dict(compare_methods=["map", "map"]), set(), r"compare_methods=\['map', 'map'\]: expected each .* at most once"),
    (dict(compare_backbones=["bert"]), set(), r"compare_backbones=\['bert'\]: expected a non-empty list of \('vilt', "),
    (dict(compare_backbones=[]), set(), r"compare_backbones=\[\]"),
    (dict(compare_seeds=[]), set(), r"compare_seeds=\[\]: expected a non-empty list of integers >= 0"),
    (dict(compare_seeds=[0, 1.5]), set(), r"compare_seeds=\[0, 1\.5\]: expected a non-empty list of integers"),
    (dict(compare_seeds=["1"]), set(), r"compare_seeds=\['1'\]: expected"),
    (dict(compare_seeds=[True]), set(), r"compare_seeds=\[True\]: expected"),
    (dict(compare_seeds=[-1]), set(), r"compare_seeds=\[-1\]: expected"),
    (dict(compare_seeds=[2, 2]), set(), r"compare_seeds=\[2, 2\]: expected distinct seeds"),
    (dict(compare_methods=["dcp"], compare_backbones=["vilt"]), set(),
     r"compare_methods=\['dcp'\]: expected at least one method that runs on compare_backbones=\['vilt'\]"),
    (dict(load_path="vilt.ckpt"), set(), r"load_path='vilt\.ckpt': expected one weights file per backbone"),
    (dict(load_path={"vilt": ""}), set(), r"load_path=\{'vilt': ''\}: expected a dict giving each of "
                                          r"compare_backbones \['vilt', 'clip'\]"),  # fmt: skip
    (dict(seed=7), {"seed"}, r"seed=7: `run\.py compare` sets it for each run \(each run's comes from compare_seeds"),
    (dict(backbone="clip"), {"backbone"}, r"backbone='clip': `run\.py compare` sets it for each run"),
    (dict(prompt_length=7, compare_methods=["map"], prompt_type="attention"), set(),
     r"prompt_length=7: expected an even length"),  # a run's own settings, checked before any run trains
]  # fmt: skip


@pytest.mark.parametrize("updates,typed,message", REFUSALS)
def test_refusals_name_the_key_and_write_nothing(tmp_path, tiny_config, updates, typed, message):
    config = tiny_config("food101", tmp_path / "no_data", tmp_path, **{**SETUP, **updates})
    with pytest.raises(ConfigError, match=message):
        compare(config, typed)
    assert not (tmp_path / "result").exists() and not (tmp_path / "tables").exists()


def test_the_run_folders_follow_the_documented_layout(setup):
    config, out = setup
    folder = Path(config["log_dir"]) / "cmp_compare"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"{b}_{m}_seed{s}_from_" for b, ms in (("vilt", ("none", "map", "mdpl")),
                            ("clip", ("none", "map", "mdpl", "dcp"))) for m in ms for s in (0, 1)]
                           + [f"cmp_seed{config['seed']}_sweep"])  # fmt: skip
    assert re.fullmatch(r"version_\d+", out.name)
