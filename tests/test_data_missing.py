"""Missing-modality tables: official names, codes, draws, reload, mismatch, concurrent creation."""

import multiprocessing as mp
import random

import pytest
import torch

from mdpl.data.missing import draw_table, load_or_create, table_path


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.7, 1.0])
def test_counts_per_type(ratio):
    n = 101
    missing = int(n * ratio)
    text = draw_table(n, ratio, "text", 0.5)
    image = draw_table(n, ratio, "image", 0.5)
    both = draw_table(n, ratio, "both", 0.3)
    assert text.dtype == torch.float32 and text.shape == (n,)
    assert (text == 1).sum() == missing and (text == 0).sum() == n - missing
    assert (image == 2).sum() == missing and (image == 0).sum() == n - missing
    assert (both == 2).sum() == int(missing * 0.3)  # both_ratio of the missing lose the image...
    assert (both == 1).sum() == missing - int(missing * 0.3)  # ...the rest the text; none loses both
    assert (draw_table(n, 0, "both", 0.5) == 0).all()


def test_file_names_follow_the_official_ratio_string(tmp_path):
    assert table_path(tmp_path, "food101_train", "both", 0.7).name == "food101_train_missing_both_07.pt"
    assert table_path(tmp_path, "mmimdb_dev", "text", 1).name == "mmimdb_dev_missing_text_1.pt"
    assert table_path(tmp_path, "mmimdb_dev", "text", 1.0).name == "mmimdb_dev_missing_text_10.pt"
    assert table_path(tmp_path, "x", "image", 0.3, "seeded", 5).name == "x_missing_image_03_seed5.pt"


def test_official_draw_reproduces_random_sample_after_seeding(tmp_path):
    # Independent computation of the official tables: train then val drawn from one seeded global random.
    random.seed(42)
    train_idx = random.sample(range(50), int(50 * 0.7))
    val_idx = random.sample(range(20), int(20 * 0.6))
    val_img = random.sample(val_idx, int(len(val_idx) * 0.5))

    random.seed(42)
    train = load_or_create(tmp_path, "t_train", 50, 0.7, "image", 0.5)
    val = load_or_create(tmp_path, "t_val", 20, 0.6, "both", 0.5)
    assert sorted(torch.nonzero(train == 2).flatten().tolist()) == sorted(train_idx)
    assert (train == 2).sum() == 35 and (train == 1).sum() == 0
    assert sorted(torch.nonzero(val == 2).flatten().tolist()) == sorted(val_img)
    assert sorted(torch.nonzero(val > 0).flatten().tolist()) == sorted(val_idx)
    assert torch.equal(torch.load(tmp_path / "t_train_missing_image_07.pt"), train)

    random.seed(0)  # an existing table is loaded, not redrawn, whatever the RNG state
    assert torch.equal(load_or_create(tmp_path, "t_train", 50, 0.7, "image", 0.5), train)


def test_ratio_zero_is_complete_and_not_saved(tmp_path):
    assert (load_or_create(tmp_path / "tables", "a", 7, 0, "text", 0.5) == 0).all()
    assert not (tmp_path / "tables").exists()


def test_seeded_draw_ignores_global_random(tmp_path):
    random.seed(1)
    a = load_or_create(tmp_path / "a", "x_train", 40, 0.5, "both", 0.5, draw="seeded", seed=7)
    random.seed(2)
    b = load_or_create(tmp_path / "b", "x_train", 40, 0.5, "both", 0.5, draw="seeded", seed=7)
    c = load_or_create(tmp_path / "c", "x_train", 40, 0.5, "both", 0.5, draw="seeded", seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (tmp_path / "a" / "x_train_missing_both_05_seed7.pt").exists()


def test_length_mismatch_names_file_and_lengths(tmp_path):
    load_or_create(tmp_path, "x_train", 10, 0.5, "text", 0.5)
    with pytest.raises(ValueError, match=r"x_train_missing_text_05\.pt has 10 rows but its arrow file has 12"):
        load_or_create(tmp_path, "x_train", 12, 0.5, "text", 0.5)


def test_unknown_type_or_bad_ratio_is_an_error(tmp_path):
    """The settings refuse them, naming the key (mdpl.train.settings: the one place values are checked)."""
    from mdpl.config import make_config
    from mdpl.errors import ConfigError
    from mdpl.train.settings import Settings

    def settings(**updates):
        root = str(tmp_path / "tables")
        config = make_config("task_finetune_food101", per_gpu_batchsize=1, missing_table_root=root, **updates)
        return Settings.from_config(config)

    with pytest.raises(ConfigError, match=r"missing_type\.train='none'"):
        settings(missing_type={"train": "none"})
    with pytest.raises(ConfigError, match=r"test_type='none'"):
        settings(test_type="none")
    with pytest.raises(ConfigError, match=r"missing_ratio\.train=1\.5: expected a number in \[0, 1\]"):
        settings(missing_ratio={"train": 1.5})
    with pytest.raises(ConfigError, match=r"test_ratio=1\.5: expected a number in \[0, 1\]"):
        settings(test_ratio=1.5)
    assert not (tmp_path / "tables").exists()


def _create(root, seed, queue):
    random.seed(seed)  # different global states: only one process's draw may win
    queue.put(load_or_create(root, "big_train", 200_000, 0.7, "both", 0.5).tolist())


@pytest.mark.slow  # starts other Python processes
def test_concurrent_creation_gives_one_identical_table(tmp_path):
    root = tmp_path / "new" / "tables"  # created on demand
    ctx = mp.get_context("spawn")  # not fork: a forked child can hang on the parent's OpenMP state
    queue = ctx.Queue()
    procs = [ctx.Process(target=_create, args=(root, seed, queue)) for seed in (1, 2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert [p.name for p in root.iterdir()] == ["big_train_missing_both_07.pt"]  # no temp leftovers
    assert torch.load(root / "big_train_missing_both_07.pt").tolist() == results[0]
