"""Bad input and faults in runs: each error names the culprit (file or key) and leaves nothing half-written."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from mdpl.errors import ConfigError
from mdpl.model.weights import load_checkpoint
from mdpl.sweep.grid import sweep
from mdpl.train.run import main
from mdpl.train.settings import Settings

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_arrows) -> Path:
    return make_arrows(tmp_path_factory.mktemp("food101"), "food101", samples=20)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory, tiny_config) -> Path:
    """A short fine-tune with two validations; returns its last.ckpt."""
    out = tmp_path_factory.mktemp("run")
    main(tiny_config("food101", data, out, max_epoch=1, val_check_interval=0.5))
    [run] = (out / "result").iterdir()
    return run / "version_0" / "checkpoints" / "last.ckpt"


def nothing_written(out: Path) -> bool:
    """No run folder, missing table, records or sweep output under `out`."""
    return not any((out / name).exists() for name in ("result", "tables", "records"))


class CreatesFile:
    """A pickle that would create a file when unpickled (torch.load with weights_only=False runs it)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": CreatesFile(marker)}}, path)
    return path, marker


# --- checkpoints -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_resume_from_is_named(damage, trained, data, tmp_path, tiny_config):
    bad = tmp_path / "bad.ckpt"
    if damage == "garbage":
        bad.write_bytes(b"not a checkpoint at all" * 10)
    else:
        whole = trained.read_bytes()
        bad.write_bytes(whole[: len(whole) // 2])
    # (garbage that is not a zip is reported by torch's weights-only unpickler, which load_checkpoint words as
    # a refusal; a truncated checkpoint is "not a readable checkpoint")
    expected = "" if damage == "garbage" else ": not a readable checkpoint"
    with pytest.raises(ValueError, match=rf"resume_from='{bad}'{expected}"):
        main(tiny_config("food101", data, tmp_path, resume_from=str(bad)))
    assert nothing_written(tmp_path)


def test_resume_from_a_plain_state_dict_is_refused_with_its_name(data, tmp_path, tiny_config):
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match=rf"resume_from='{plain}': not a checkpoint of a Lightning fit"):
        main(tiny_config("food101", data, tmp_path, resume_from=str(plain)))
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("key", ["load_path", "resume_from", "sweep_paths"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(key, evil, data, tmp_path, tiny_config):
    path, marker = evil
    out = tmp_path / "out"
    if key == "sweep_paths":
        with pytest.raises(ValueError, match=rf"{key}='{path}': refused"):
            sweep(tiny_config("food101", data, out, sweep_paths=[str(path)], sweep_ratios=[0.0]))
    else:
        with pytest.raises(ValueError, match=rf"{key}='{path}': refused.*trust_checkpoint=True"):
            main(tiny_config("food101", data, out, **{key: str(path)}))
    assert not marker.exists()
    assert nothing_written(out)


def test_trust_checkpoint_loads_a_legitimate_file(trained, data, tmp_path, tiny_config):
    assert load_checkpoint(str(trained), "load_path", trust=True)["global_step"] > 0
    [metrics] = main(
        tiny_config("food101", data, tmp_path, test_only=True, load_path=str(trained), trust_checkpoint=True)
    )
    assert 0 <= metrics["test/the_metric"] <= 1


def test_a_fine_tuned_checkpoint_of_another_task_as_pretrained_load_path_warns(trained, tmp_path, tiny_config, caplog):
    from helpers import create_model

    settings = Settings.from_config(tiny_config("hatememes", tmp_path, tmp_path, load_path=str(trained)))
    with caplog.at_level(logging.WARNING, logger="mdpl.model.weights"):
        create_model(settings)
    [record] = [r for r in caplog.records if "fine-tuned checkpoint" in r.getMessage()]
    assert str(trained) in record.getMessage() and "food101_classifier" in record.getMessage()


# --- data ----------------------------------------------------------------------------------------------------


def _rewrite(src: Path, dst: Path, name: str, change) -> Path:
    """A copy of the data folder `src` at `dst` with the arrow file `name` changed by change(table)."""
    shutil.copytree(src, dst)
    with pa.memory_map(str(dst / name), "r") as source:
        table = pa.ipc.open_file(source).read_all()
    table = change(table)
    os.remove(dst / name)
    with pa.OSFile(str(dst / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return dst


def _set_label(table: pa.Table, value: int) -> pa.Table:
    labels = table.column("label").to_pylist()
    labels[0] = value
    return table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))


def test_food101_label_beyond_the_class_count_names_the_key_and_the_label(data, tmp_path, tiny_config):
    # the synthetic data has 4 classes: labels up to 3
    with pytest.raises(ConfigError, match=r"food101_class_num=3: .*food101_train\.arrow' holds label 3"):
        main(tiny_config("food101", data, tmp_path, food101_class_num=3))
    assert nothing_written(tmp_path)


def test_hatememes_label_beyond_the_class_count_names_the_key(tmp_path, make_arrows, tiny_config):
    clean = make_arrows(tmp_path / "hate", "hatememes", samples=12)
    root = _rewrite(clean, tmp_path / "bad", "hatememes_dev.arrow", lambda t: _set_label(t, 5))
    with pytest.raises(ConfigError, match=r"hatememes_class_num=2: .*hatememes_dev\.arrow' holds label 5"):
        main(tiny_config("hatememes", root, tmp_path))
    assert nothing_written(tmp_path)


def test_mmimdb_label_width_other_than_the_class_count_names_the_key(tmp_path, make_arrows, tiny_config):
    root = make_arrows(tmp_path / "imdb", "mmimdb", samples=12)  # multi-hot labels of 23 genres
    with pytest.raises(ConfigError, match=r"mmimdb_class_num=20: .*mmimdb_train\.arrow' holds multi-hot labels of 23"):
        main(tiny_config("mmimdb", root, tmp_path, mmimdb_class_num=20))
    assert nothing_written(tmp_path)


def test_empty_validation_split_is_an_error_naming_the_arrow_file(data, tmp_path, tiny_config):
    root = _rewrite(data, tmp_path / "arrows", "food101_val.arrow", lambda t: t.slice(0, 0))
    with pytest.raises(ValueError, match=r"food101_val\.arrow': the val split has no samples.*no best checkpoint"):
        main(tiny_config("food101", root, tmp_path))
    assert nothing_written(tmp_path)


# --- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "updates, message",
    [
        (dict(both_ratio=1.5), "both_ratio=1.5: expected a number in [0, 1]"),
        (dict(both_ratio=-0.1), "both_ratio=-0.1"),
        (dict(missing_ratio={"train": "0.7", "val": 0.7, "test": 0.7}), "missing_ratio.train='0.7': expected a number"),
        (dict(val_check_interval=0), "val_check_interval=0: expected"),
        (dict(val_check_interval=-0.5), "val_check_interval=-0.5: expected"),
        (dict(val_check_interval=1.5), "val_check_interval=1.5: expected"),
    ],
)
def test_bad_values_name_the_key_before_anything_is_written(updates, message, data, tmp_path, tiny_config):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        main(tiny_config("food101", data, tmp_path, **updates))
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    "updates, message",
    [
        (dict(sweep_ratios=0.5), "sweep_ratios=0.5: expected a non-empty list"),
        (dict(sweep_ratios=[0.5, "x"]), "sweep_ratios='x'"),
        (dict(sweep_types="text"), "sweep_types='text': expected a non-empty list"),
        (dict(sweep_types=["text", "audio"]), "sweep_types=['text', 'audio']"),
    ],
)
def test_bad_sweep_lists_name_the_key(updates, message, trained, data, tmp_path, tiny_config):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        sweep(tiny_config("food101", data, tmp_path, sweep_paths=[str(trained)], **updates))
    assert nothing_written(tmp_path)


def test_log_dir_that_cannot_be_created_is_named_before_any_work(data, tmp_path, tiny_config):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=rf"log_dir='{blocker}/logs': cannot create it"):
        main(tiny_config("food101", data, tmp_path, log_dir=str(blocker / "logs")))
    assert nothing_written(tmp_path)


def test_unusable_records_root_or_log_dir_fails_before_the_evaluation(trained, data, tmp_path, tiny_config):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = dict(test_only=True, load_path=str(trained), test_exp_name="tiny")
    with pytest.raises(ConfigError, match=rf"records_root='{blocker}/records': the records file .* cannot be created"):
        main(tiny_config("food101", data, tmp_path, records_root=str(blocker / "records"), **cfg))
    with pytest.raises(ConfigError, match=rf"log_dir='{blocker}/logs': cannot create it"):
        main(tiny_config("food101", data, tmp_path, log_dir=str(blocker / "logs"), **cfg))
    assert nothing_written(tmp_path)


# --- disk full while writing a checkpoint ---------------------------------------------------------------------


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_last_ckpt(data, tmp_path, tiny_config, monkeypatch):
    real_save = torch.save
    seen = {"last": 0}
    previous = {}

    def full_disk(obj, f, *args, **kwargs):
        name = Path(getattr(f, "name", str(f))).name
        if "last" in name:
            seen["last"] += 1
            if seen["last"] == 2:  # the second last.ckpt: half written, then the disk is full
                done = next(Path(f.name).parent.glob("last.ckpt"))
                previous["bytes"] = done.read_bytes()
                f.write(b"\0" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="(?i)no space left on device") as raised:
        main(tiny_config("food101", data, tmp_path, max_epoch=1, val_check_interval=0.5))
    monkeypatch.undo()
    assert raised.value.errno == errno.ENOSPC
    [run] = (tmp_path / "result").iterdir()
    folder = run / "version_0" / "checkpoints"
    last = folder / "last.ckpt"
    assert str(last) in str(raised.value)  # the error names the file it could not write
    assert last.read_bytes() == previous["bytes"]  # the previous one, untouched
    assert load_checkpoint(str(last), "resume_from")["global_step"] >= 1
    names = sorted(p.name for p in folder.iterdir())
    assert "last.ckpt" in names and all(n.endswith(".ckpt") and not n.startswith(".") for n in names), names
    assert len(names) == 2  # the best and last.ckpt, no temporary file
