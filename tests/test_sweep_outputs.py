"""Sweep outputs that compare methods and seeds: groups (sweep_groups, or automatic by saved config without
the seed) with mean ± std, each line's average, config.json, the effective missing rate and the figure (a panel
per missing type, a colour per method, a line style per backbone; PNG, PDF and SVG)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mdpl.data.arrow import ArrowDataset
from mdpl.errors import ConfigError
from mdpl.sweep.grid import sweep
from mdpl.sweep.groups import group_names
from mdpl.sweep.outputs import label_parts, markdown, plot_sweep, read_rows, summarise, write_outputs
from mdpl.train.run import main

TEST_SAMPLES = 6  # of the 40 synthetic samples (28 train, 6 val, 6 test)
GRID = dict(sweep_types=["text", "image"], sweep_ratios=[0.0, 0.5])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory, make_arrows, tiny_config) -> tuple[Path, list[str]]:
    """Two one-epoch MDPL runs that differ only in their seed; returns (data_root, [last.ckpt, last.ckpt])."""
    root = tmp_path_factory.mktemp("seeds")
    data = make_arrows(root, "food101")
    ckpts = []
    for seed in (1, 2):
        out = root / f"seed{seed}"
        main(tiny_config("food101", data, out, seed=seed, max_epoch=1))
        [run] = (out / "result").iterdir()
        ckpts.append(str(run / "version_0" / "checkpoints" / "last.ckpt"))
    return data, ckpts


@pytest.fixture(scope="module")
def swept(seeds, tmp_path_factory, tiny_config) -> Path:
    data, ckpts = seeds
    out = tmp_path_factory.mktemp("sweep")
    return sweep(tiny_config("food101", data, out, sweep_paths=ckpts, **GRID))


def _table(out: Path) -> list[list[str]]:
    lines = (out / "sweep.md").read_text().splitlines()
    return [[c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("|")]


def test_seeds_of_one_recipe_form_one_group_with_mean_and_std(swept):
    header, _, *body = _table(swept)
    assert header == ["missing ratio", "mdpl/text", "mdpl/image"]  # one group: the two seeds averaged
    assert [r[0] for r in body] == ["0", "0.5", "average"]
    rows = read_rows(swept / "sweep.csv")
    assert len(rows) == 2 * 2 * 2 and {r["group"] for r in rows} == {"mdpl"}
    assert sorted({r["seed"] for r in rows}) == ["1", "2"]
    for line in body:
        for cell in line[1:]:
            mean, std = (float(x) for x in cell.split(" ± "))
            assert 0 <= mean <= 100 and std >= 0
    # the cells are the mean and sample std of the two checkpoints' values
    ratio0 = [r["the_metric"] * 100 for r in rows if r["missing_type"] == "text" and r["missing_ratio"] == 0.0]
    mean, std = (float(x) for x in body[0][1].split(" ± "))
    assert mean == pytest.approx(sum(ratio0) / 2, abs=0.006)
    assert std == pytest.approx(abs(ratio0[0] - ratio0[1]) / 2**0.5, abs=0.006)
    # average row: each checkpoint's mean over the ratio grid, then mean over the checkpoints
    text = [r["the_metric"] * 100 for r in rows if r["missing_type"] == "text"]
    assert float(body[2][1].split(" ± ")[0]) == pytest.approx(sum(text) / len(text), abs=0.006)
    summary = (swept / "sweep_summary.csv").read_text().splitlines()
    assert summary[0].startswith("group,missing_type,missing_ratio,n,the_metric_mean,the_metric_std")
    assert len(summary) == 1 + 2 * 2 and all(",2," in line for line in summary[1:])


def test_config_json_names_the_checkpoints_and_groups(swept, seeds):
    _, ckpts = seeds
    record = json.loads((swept / "config.json").read_text())
    assert [c["path"] for c in record["checkpoints"]] == ckpts
    assert [c["group"] for c in record["checkpoints"]] == ["mdpl", "mdpl"]
    assert [c["seed"] for c in record["checkpoints"]] == [1, 2]
    assert record["groups"] == {"mdpl": ckpts}
    assert record["config"]["sweep_paths"] == ckpts and record["sweep_ratios"] == [0.0, 0.5]
    assert not list(swept.glob("*.tmp*"))  # written atomically: no temporary left


def test_effective_missing_rate_per_point(swept):
    rows = read_rows(swept / "sweep.csv")
    assert {r["test_samples"] for r in rows} == {TEST_SAMPLES}
    assert all(r["effective_missing_rate"] == 0 for r in rows if r["missing_ratio"] == 0.0)
    assert all(r["effective_missing_rate"] == 0.5 for r in rows if r["missing_ratio"] == 0.5)  # one text per row


def test_figure_has_a_panel_per_missing_type_and_is_written_for_papers(swept):
    rows = read_rows(swept / "sweep.csv")
    fig = plot_sweep(summarise(rows), "food101 accuracy")
    assert [ax.get_title() for ax in fig.axes] == ["text missing", "image missing"]
    assert fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[1])
    for ax in fig.axes:
        assert len(ax.get_lines()) == 1 and len(ax.collections) == 1  # the group's mean line and its ± std band
    [legend] = fig.legends  # one legend for the panels: one entry per group
    assert [t.get_text() for t in legend.get_texts()] == ["mdpl (mean ± std of 2)"]
    title = fig.get_suptitle()
    assert "accuracy" in title and "test split" in title and f"{TEST_SAMPLES:g} test samples" in title
    assert (swept / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (swept / "sweep.pdf").read_bytes()[:4] == b"%PDF"
    assert "<svg" in (swept / "sweep.svg").read_text()


def _summary(groups: list[str], types: list[str], ratios: list[float]) -> list[dict]:
    """A summary with one checkpoint per group (two for "mdpl") at every type and ratio."""
    rows = [
        {"checkpoint": f"{group}-{seed}.ckpt", "label": f"{group}/{t}", "missing_type": t, "missing_ratio": r,
         "the_metric": 0.5 + 0.01 * i - 0.2 * r + 0.01 * seed, "group": group, "seed": seed, "test_samples": 10}
        for i, group in enumerate(groups)
        for seed in ((1, 2) if group == "mdpl" else (0,))
        for t in types
        for r in ratios
    ]  # fmt: skip
    return summarise(rows)


def _styles(ax) -> list[tuple]:
    """(colour, line style, marker) of each of a panel's lines, in drawing order (the groups' order)."""
    return [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]


def test_colours_by_method_line_styles_by_backbone():
    assert label_parts("mdpl") == ("mdpl", "vilt")
    assert label_parts("dcp@clip") == ("dcp", "clip")
    assert label_parts("mdpl@clip (learning_rate=0.01)") == ("mdpl (learning_rate=0.01)", "clip")
    assert label_parts("mdpl:runA/version_0/checkpoints/last") == ("mdpl:runA/version_0/checkpoints/last", "vilt")
    groups = ["mdpl", "map", "mdpl@clip", "dcp@clip"]
    fig = plot_sweep(_summary(groups, ["text", "image", "both"], [0.0, 0.5, 1.0]), "food101 accuracy")
    assert len(fig.axes) == 3  # one panel per missing type
    for ax in fig.axes:
        mdpl, map_, mdpl_clip, dcp_clip = _styles(ax)
        assert mdpl[0] == mdpl_clip[0] and len({mdpl[0], map_[0], dcp_clip[0]}) == 3  # one colour per method
        assert mdpl[1:] == map_[1:] == ("-", "o") and mdpl_clip[1:] == dcp_clip[1:] == ("--", "s")  # per backbone
        assert len(ax.collections) == 1  # a band for the one group of several checkpoints
        xs = [tuple(line.get_xdata()) for line in ax.get_lines()]
        assert len(set(xs)) == len(xs)  # small x offsets: no line's points sit on another's
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["mdpl (mean ± std of 2)", "map", "mdpl@clip", "dcp@clip"]


def test_one_backbone_draws_solid_lines_and_recipes_get_their_own_colours():
    groups = ["mdpl (learning_rate=0.001)", "mdpl (learning_rate=0.01)", "map"]
    fig = plot_sweep(_summary(groups, ["both"], [0.0, 0.7]), "food101 accuracy")
    [ax] = fig.axes
    styles = _styles(ax)
    assert len({s[0] for s in styles}) == 3 and {s[1:] for s in styles} == {("-", "o")}


def test_sweep_groups_names_each_checkpoints_group(seeds, tmp_path, tiny_config):
    data, ckpts = seeds
    out = sweep(
        tiny_config(
            "food101",
            data,
            tmp_path,
            sweep_paths=ckpts,
            sweep_groups=["first", "second"],
            sweep_types=["both"],
            sweep_ratios=[0.5],
        )
    )
    header, _, ratio, average = _table(out)
    assert header == ["missing ratio", "first/both", "second/both"]
    assert all(cell.endswith(" ± 0.00") for cell in ratio[1:] + average[1:])  # one checkpoint each: std 0
    assert json.loads((out / "config.json").read_text())["groups"] == {"first": [ckpts[0]], "second": [ckpts[1]]}


def test_sweep_groups_of_the_wrong_length_is_an_error(seeds, tmp_path, tiny_config):
    data, ckpts = seeds
    cfg = tiny_config("food101", data, tmp_path, sweep_paths=ckpts, sweep_groups=["only one"])
    with pytest.raises(ConfigError, match=r"sweep_groups has 1 entries but sweep_paths .* lists 2"):
        sweep(cfg)
    with pytest.raises(ConfigError, match="sweep_groups"):
        sweep(tiny_config("food101", data, tmp_path, sweep_paths=ckpts, sweep_groups=["a", ""]))
    assert not (tmp_path / "result").exists()


def test_automatic_groups():
    recipe = {"prompt_method": "mdpl", "learning_rate": 1e-3, "max_epoch": 1}
    names = ["mdpl:a", "mdpl:b", "mdpl:c", "mdpl:d", "map"]
    methods = ["mdpl"] * 4 + ["map"]
    saved = [
        {**recipe, "seed": 1},
        {**recipe, "seed": 2},
        {**recipe, "learning_rate": 1e-2, "seed": 1},
        {**recipe, "learning_rate": 1e-2, "seed": 2},
        {**recipe, "prompt_method": "map", "seed": 0},
    ]
    assert group_names(names, methods, saved, []) == ["mdpl (learning_rate=0.001)"] * 2 + [
        "mdpl (learning_rate=0.01)"
    ] * 2 + ["map"]
    # the same seed twice (best and last of one run) is no seed group; official checkpoints (no config) neither
    assert group_names(names[:2], methods[:2], [{**recipe, "seed": 1}] * 2, []) == ["mdpl:a", "mdpl:b"]
    assert group_names(names[:2], methods[:2], [{}, {}], []) == ["mdpl:a", "mdpl:b"]
    assert group_names(names[:2], methods[:2], saved[:2], ["x", "x"]) == ["x", "x"]


def _part(texts_per_row: list[int], codes: list[int]) -> SimpleNamespace:
    """The two attributes of an ArrowDataset that missing_share reads (one missing table)."""
    index = [(row, k) for row, n in enumerate(texts_per_row) for k in range(n)]
    return SimpleNamespace(index=index, codes=[(c,) for c in codes])


def test_mmimdb_effective_missing_rate_counts_samples_not_movies(tmp_path):
    # two movies, half of them missing: the missing one has three plots, the other one
    assert ArrowDataset.missing_share(_part([3, 1], [1, 0]), 0) == 0.75
    rows = [
        {
            "checkpoint": "a.ckpt",
            "prompt_method": "mdpl",
            "label": "mdpl/text",
            "missing_type": "text",
            "missing_ratio": r,
            "the_metric": 0.5,
            "group": "mdpl",
            "seed": 0,
            "effective_missing_rate": e,
            "test_samples": 4,
        }
        for r, e in ((0.0, 0.0), (0.5, 0.75))
    ]
    table = markdown(rows, summarise(rows), "mmimdb f1_macro", ("mmimdb",))
    assert "Effective missing rate" in table and "| 0.5 | 75.0 |" in table
    assert "Effective missing rate" not in markdown(rows, summarise(rows), "food101 accuracy", ("food101",))
    write_outputs(rows, tmp_path, "mmimdb f1_macro", ("mmimdb",))
    assert read_rows(tmp_path / "sweep.csv")[1]["effective_missing_rate"] == 0.75
