"""Bad input and faults on the data side: every refusal names the file (and row, key or field) and what was
expected, and nothing half-written is left (make_arrow, read_arrow, ArrowDataset, missing tables, records).

Heavy modules (torch, pyarrow, PIL) are imported inside the tests so that the spawned record appenders start
fast: a "spawn" child imports this module to find its target.
"""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def generate(dataset, root, **kw):
    from mdpl.data.synthetic import generate

    return generate(dataset, root, **{"samples": 10, "classes": 3, "side_range": (8, 16), **kw})


def convert(dataset, root, out, **kw):
    from mdpl.data.writers import WRITERS, convert

    return convert(WRITERS[dataset], root, out, **kw)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder (hidden ones included) -> its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def titles(path: Path) -> list[str]:
    from mdpl.data.arrow import read_arrow

    return [t[0] for t in read_arrow(path).column("text").to_pylist()]


# ---------------------------------------------------------------- make_arrow: types checked before writing


def _edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def _edit_jsonl(path: Path, line: int, edit) -> None:
    lines = path.read_text().splitlines()
    obj = json.loads(lines[line - 1])
    edit(obj)
    lines[line - 1] = json.dumps(obj)
    path.write_text("".join(x + "\n" for x in lines))


def _mmimdb_label(raw: Path) -> Path:
    movie = json.loads((raw / "split.json").read_text())["dev"][0]
    return raw / "labels" / f"{movie}.json"


def _food_sample(raw: Path, split: str = "val") -> str:
    return json.loads((raw / "split.json").read_text())[split][0]


def _bad_plot(raw):
    path = _mmimdb_label(raw)
    _edit_json(path, lambda o: o.update(plot=7))
    return rf'{path}: field "plot" must be a list of strings, got int'


def _bad_genre_item(raw):
    path = _mmimdb_label(raw)
    _edit_json(path, lambda o: o.update(genres=["Drama", 3]))
    return rf'{path}: field "genres" must be a list of strings, got int at index 1'


def _genres_string(raw):
    path = _mmimdb_label(raw)
    _edit_json(path, lambda o: o.update(genres="Drama"))
    return rf'{path}: field "genres" must be a list of strings, got str'


def _label_file_not_utf8(raw):
    path = _mmimdb_label(raw)
    path.write_bytes(path.read_bytes().replace(b'"plot"', b'"pl\xe9ot"'))  # latin-1, not UTF-8
    return rf"{path}:\d+: not valid UTF-8 text \(byte 0xe9"


def _text_not_string(raw):
    path = raw / "data" / "dev.jsonl"
    _edit_jsonl(path, 2, lambda o: o.update(text=5))
    return rf'{path}:2: field "text" must be a string, got int'


def _label_bool(raw):
    path = raw / "data" / "train.jsonl"
    _edit_jsonl(path, 1, lambda o: o.update(label=True))
    return rf'{path}:1: field "label" must be the integer 0 or 1, got bool'


def _label_two(raw):
    path = raw / "data" / "test.jsonl"
    _edit_jsonl(path, 1, lambda o: o.update(label=2))
    return rf'{path}:1: field "label" must be the integer 0 or 1, got int 2'


def _label_string(raw):
    path = raw / "data" / "train.jsonl"
    _edit_jsonl(path, 3, lambda o: o.update(label="1"))
    return rf'{path}:3: field "label" must be the integer 0 or 1, got str'


def _jsonl_not_utf8(raw):
    path = raw / "data" / "train.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"text": "', b'"text": "caf\xe9 ')
    path.write_bytes(b"\n".join(lines))
    return rf"{path}:3: not valid UTF-8 text"


def _lone_surrogate(raw):
    path = raw / "data" / "dev.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"text": "', '"text": "\\ud800')  # valid JSON, not encodable as UTF-8
    path.write_text("".join(x + "\n" for x in lines))
    return rf'{path}:1: field "text" is not valid UTF-8 text'


def _jsonl_line_not_object(raw):
    path = raw / "data" / "dev.jsonl"
    path.write_text(path.read_text() + "[1, 2]\n")
    return rf"{path}:\d+: must be a JSON object \(\{{...\}}\), got list"


def _food_no_class_prefix(raw):
    sample = _food_sample(raw)
    _edit_json(raw / "split.json", lambda o: o["val"].__setitem__(0, "nounderscore.jpg"))
    _edit_json(raw / "text.json", lambda o: o.update({"nounderscore.jpg": o.pop(sample)}))
    return rf'{raw / "split.json"}: split "val" item 0 "nounderscore.jpg": file name must be <class>_<number>'


def _food_unknown_class(raw):
    sample = _food_sample(raw, "test")
    _edit_json(raw / "split.json", lambda o: o["test"].__setitem__(0, "pizza_9.jpg"))
    _edit_json(raw / "text.json", lambda o: o.update({"pizza_9.jpg": o.pop(sample)}))
    return rf"{raw / 'split.json'}: split \"test\" item 0 \"pizza_9.jpg\": .*got class 'pizza'"


def _food_title_not_string(raw):
    sample = _food_sample(raw)
    _edit_json(raw / "text.json", lambda o: o.update({sample: ["a", "list"]}))
    return rf'{raw / "text.json"}: sample "{sample}": title must be a string, got list'


def _food_text_json_not_utf8(raw):
    path = raw / "text.json"
    path.write_bytes(b'{"\xff": "x"}')
    return rf"{path}:1: not valid UTF-8 text \(byte 0xff at offset 2\)"


def _food_split_not_list(raw):
    _edit_json(raw / "split.json", lambda o: o.update(val="apple_pie_1.jpg"))
    return rf'{raw / "split.json"}: split "val" must be a list of strings, got str'


def _food_class_index_not_int(raw):
    _edit_json(raw / "class_idx.json", lambda o: o.update({next(iter(o)): "0"}))
    return rf'{raw / "class_idx.json"}: class "\w+" must map to an integer index, got str'


CASES = {
    "plot_int": ("mmimdb", "mmimdb", _bad_plot),
    "genre_item_int": ("mmimdb", "mmimdb", _bad_genre_item),
    "genres_str": ("mmimdb", "mmimdb", _genres_string),
    "label_file_not_utf8": ("mmimdb", "mmimdb", _label_file_not_utf8),
    "text_int": ("hateful_memes", "Hatememes", _text_not_string),
    "label_bool": ("hateful_memes", "Hatememes", _label_bool),
    "label_2": ("hateful_memes", "Hatememes", _label_two),
    "label_str": ("hateful_memes", "Hatememes", _label_string),
    "jsonl_not_utf8": ("hateful_memes", "Hatememes", _jsonl_not_utf8),
    "lone_surrogate": ("hateful_memes", "Hatememes", _lone_surrogate),
    "jsonl_list": ("hateful_memes", "Hatememes", _jsonl_line_not_object),
    "no_class_prefix": ("food101", "Food101", _food_no_class_prefix),
    "unknown_class": ("food101", "Food101", _food_unknown_class),
    "title_list": ("food101", "Food101", _food_title_not_string),
    "text_json_not_utf8": ("food101", "Food101", _food_text_json_not_utf8),
    "split_str": ("food101", "Food101", _food_split_not_list),
    "class_index_str": ("food101", "Food101", _food_class_index_not_int),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_raw_input_is_refused_before_anything_is_written(tmp_path, case):
    dataset, subdir, corrupt = CASES[case]
    generate(dataset, tmp_path / "raw")
    pattern = corrupt(tmp_path / "raw" / subdir)
    with pytest.raises(ValueError, match=pattern):
        convert(dataset, tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no arrow file, no temporary file, not even the folder


@pytest.mark.parametrize("case", ["title_list", "label_bool"])
def test_bad_input_leaves_an_earlier_conversion_untouched(tmp_path, case):
    dataset, subdir, corrupt = CASES[case]
    generate(dataset, tmp_path / "raw")
    convert(dataset, tmp_path / "raw", tmp_path / "out")
    before = snapshot(tmp_path / "out")
    corrupt(tmp_path / "raw" / subdir)
    with pytest.raises(ValueError):
        convert(dataset, tmp_path / "raw", tmp_path / "out")
    assert snapshot(tmp_path / "out") == before  # same files, same bytes, nothing beside them


def test_bad_image_during_writing_leaves_an_earlier_conversion_untouched(tmp_path):
    from mdpl.data.writers import BadImageError

    raw = generate("hateful_memes", tmp_path / "raw")
    convert("hateful_memes", tmp_path / "raw", tmp_path / "out")
    before = snapshot(tmp_path / "out")
    img = raw / "data" / json.loads((raw / "data" / "test.jsonl").read_text().splitlines()[0])["img"]
    img.write_bytes(img.read_bytes()[:30])  # the last split: train and dev temporary files are complete
    with pytest.raises(BadImageError, match=str(img)):
        convert("hateful_memes", tmp_path / "raw", tmp_path / "out")
    assert snapshot(tmp_path / "out") == before


@pytest.mark.slow  # starts other Python processes
def test_make_arrow_prints_one_line_naming_file_and_line(tmp_path):
    raw = generate("hateful_memes", tmp_path / "raw")
    _label_bool(raw)
    cmd = [sys.executable, str(ROOT / "make_arrow.py"), "--dataset", "hateful_memes", "--root", str(tmp_path / "raw"),
           "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f'make_arrow: {raw / "data" / "train.jsonl"}:1: field "label" must be the integer 0 or 1, got bool'
    ]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- make_arrow killed: all or nothing

CHILD = """
import os, sys, time
from pathlib import Path
import mdpl.data.writers.common as common
from mdpl.data.writers import WRITERS

root, out, marker, phase = sys.argv[1:5]

def pause():
    Path(marker).write_text(str(os.getpid()))
    time.sleep(120)

if phase == "write":  # pause in the second split: train's temporary file complete, val's begun
    real = common._record_batches
    def slow(spec, entries, skip_bad, skipped, desc):
        if desc != "food101_train":
            pause()
        yield from real(spec, entries, skip_bad, skipped, desc)
    common._record_batches = slow
else:  # pause inside the commit: train renamed into place, val and test not yet
    real_replace = os.replace
    def slow_replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("food101_train.arrow"):
            pause()
    os.replace = slow_replace

common.convert(WRITERS["food101"], root, out)
"""


def _kill_during(phase: str, tmp_path: Path) -> None:
    """Run a conversion of tmp_path/raw into tmp_path/out in a subprocess and kill -9 it at `phase`."""
    marker = tmp_path / "paused"
    log = open(tmp_path / "child.log", "w")
    args = [sys.executable, "-c", CHILD, str(tmp_path / "raw"), str(tmp_path / "out"), str(marker), phase]
    proc = subprocess.Popen(args, env=ENV, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, (tmp_path / "child.log").read_text()
        assert time.monotonic() < deadline, "the conversion never reached its pause"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    log.close()


def _new_titles(raw: Path) -> None:
    _edit_json(raw / "text.json", lambda o: o.update({k: v + " new" for k, v in o.items()}))


ARROWS = ["food101_test.arrow", "food101_train.arrow", "food101_val.arrow"]


@pytest.mark.slow  # starts other Python processes
def test_conversion_killed_while_writing_leaves_the_old_files(tmp_path):
    raw = generate("food101", tmp_path / "raw", samples=12)
    convert("food101", tmp_path / "raw", tmp_path / "out")
    before = snapshot(tmp_path / "out")
    assert sorted(before) == ARROWS
    _new_titles(raw)

    _kill_during("write", tmp_path)
    after = snapshot(tmp_path / "out")
    assert {k: v for k, v in after.items() if not k.startswith(".")} == before  # old set intact, nothing new
    stale = sorted(k for k in after if k.startswith("."))
    pid = (tmp_path / "paused").read_text()
    assert stale == [f".food101_train.arrow.{pid}.tmp", f".food101_val.arrow.{pid}.tmp"]
    assert not any(t.endswith(" new") for t in titles(tmp_path / "out" / "food101_train.arrow"))

    cmd = [sys.executable, str(ROOT / "make_arrow.py"), "--dataset", "food101", "--root", str(tmp_path / "raw"),
           "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ARROWS  # stale temporary files removed
    for name in ARROWS:
        assert all(t.endswith(" new") for t in titles(tmp_path / "out" / name))


@pytest.mark.slow  # starts other Python processes
def test_conversion_killed_while_renaming_is_refused_then_completed(tmp_path):
    from mdpl.data.arrow import read_arrow
    from mdpl.data.writers.common import PENDING

    raw = generate("food101", tmp_path / "raw", samples=12)
    convert("food101", tmp_path / "raw", tmp_path / "out")
    _new_titles(raw)

    _kill_during("commit", tmp_path)
    out = tmp_path / "out"
    assert (out / PENDING).exists()
    import pyarrow as pa

    def raw_titles(name):  # bypassing read_arrow's refusal: new train, old val and test
        return [t[0] for t in pa.ipc.open_file(str(out / name)).read_all().column("text").to_pylist()]

    assert all(t.endswith(" new") for t in raw_titles("food101_train.arrow"))
    assert not any(t.endswith(" new") for t in raw_titles("food101_val.arrow") + raw_titles("food101_test.arrow"))
    for name in ARROWS:  # new train beside old val/test is never read
        with pytest.raises(ValueError, match=rf"{out / name}: its make_arrow conversion was interrupted"):
            read_arrow(out / name)

    # The next run completes the interrupted set first, even though its own input is bad.
    _edit_json(raw / "text.json", lambda o: o.update({_food_sample(raw): 1}))
    with pytest.raises(ValueError, match="title must be a string, got int"):
        convert("food101", tmp_path / "raw", out)
    assert sorted(p.name for p in out.iterdir()) == ARROWS  # journal and temporary files gone
    for name in ARROWS:
        assert all(t.endswith(" new") for t in titles(out / name))


# ---------------------------------------------------------------- reading arrow files


def _arrow(tmp_path: Path) -> Path:
    generate("food101", tmp_path / "raw")
    convert("food101", tmp_path / "raw", tmp_path / "out")
    return tmp_path / "out" / "food101_train.arrow"


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_unreadable_arrow_file_is_named(tmp_path, damage):
    from mdpl.data.arrow import read_arrow

    path = _arrow(tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "text": b"image,label\n1,2\n", "empty": b""}[damage])
    with pytest.raises(ValueError, match=rf"{path}: not a readable Arrow IPC file.*Re-run make_arrow"):
        read_arrow(path)


def _with_bad_image(path: Path, row: int) -> None:
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    images = table.column("image").to_pylist()
    images[row] = images[row][:25]  # a truncated JPEG
    table = table.set_column(0, "image", pa.array(images, pa.binary()))
    tmp = path.with_name("new.arrow")  # not in place: the old file is still memory-mapped
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


@pytest.mark.parametrize("code", [0, 1])
def test_undecodable_image_names_arrow_file_and_row(tmp_path, code):
    import torch

    from mdpl.data.arrow import ArrowDataset, read_arrow
    from mdpl.data.transforms import keys_to_transforms
    from mdpl.data.writers import BadImageError

    path = _arrow(tmp_path)
    _with_bad_image(path, 2)
    table = read_arrow(path)
    missing = torch.full((table.num_rows,), float(code))
    ds = ArrowDataset(table, "text", keys_to_transforms(["pixelbert"], 64), [missing])
    ds[1]  # the other rows load
    with pytest.raises(BadImageError, match=rf"{path}: row 2: image bytes cannot be decoded"):
        ds[2]
    named = ArrowDataset(table, "text", keys_to_transforms(["pixelbert"], 64), [missing], source="elsewhere.arrow")
    with pytest.raises(BadImageError, match=r"^elsewhere\.arrow: row 2: "):
        named[2]


def test_arrow_without_a_needed_column_is_named(tmp_path):
    import torch

    from mdpl.data.arrow import ArrowDataset, read_arrow

    path = _arrow(tmp_path)
    table = read_arrow(path)
    with pytest.raises(ValueError, match=rf"{path}: no column \['plots'\]"):
        ArrowDataset(table, "plots", [], [torch.zeros(table.num_rows)])


# ---------------------------------------------------------------- missing tables


def _saved(tmp_path: Path, obj=None, raw: bytes | None = None) -> Path:
    import torch

    path = tmp_path / "x_train_missing_text_05.pt"
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(obj, path)
    return path


def _bad_tables():
    import argparse

    import torch

    good = torch.zeros(10)
    return {
        "garbage": (None, b"not a torch file at all", r"cannot be read \(\w+"),
        "empty": (None, b"", r"cannot be read"),
        "pickled object": (argparse.Namespace(a=1), None, r"cannot be read \(UnpicklingError"),
        "dict": ({"table": good}, None, r"holds a dict, expected a 1-D tensor"),
        "2-D": (torch.zeros(2, 5), None, r"shape \(2, 5\), expected a 1-D tensor"),
        "code 3": (torch.tensor([0.0, 1, 3, 2, 0, 0, 0, 0, 0, 0]), None, r"codes outside \{0, 1, 2\} \(3\.0 at row 2"),
        "nan": (torch.tensor([float("nan")] + [0.0] * 9), None, r"codes outside \{0, 1, 2\} \(nan at row 0"),
        "bool": (torch.zeros(10, dtype=torch.bool), None, r"torch\.bool tensor"),
    }


@pytest.mark.parametrize("case", ["garbage", "empty", "pickled object", "dict", "2-D", "code 3", "nan", "bool"])
def test_bad_missing_table_file_is_named(tmp_path, case):
    from mdpl.data.missing import load_or_create

    obj, raw, pattern = _bad_tables()[case]
    path = _saved(tmp_path, obj, raw)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=rf"missing table {path} .*{pattern}.*delete it to redraw"):
        load_or_create(tmp_path, "x_train", 10, 0.5, "text", 0.5)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp


def test_truncated_missing_table_is_named(tmp_path):
    import torch

    from mdpl.data.missing import load_or_create

    path = _saved(tmp_path, torch.zeros(1000))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=rf"missing table {path} cannot be read.*delete it to redraw"):
        load_or_create(tmp_path, "x_train", 1000, 0.5, "text", 0.5)


def test_integer_codes_are_accepted(tmp_path):
    import torch

    from mdpl.data.missing import load_or_create

    table = torch.tensor([0, 1, 2, 0, 0, 0, 0, 0, 0, 0])
    _saved(tmp_path, table)
    assert torch.equal(load_or_create(tmp_path, "x_train", 10, 0.5, "text", 0.5), table)


BAD_RATIOS = ["0.7", True, float("nan"), -0.1]  # a string, a bool, NaN, out of [0, 1]
BAD_BOTH = [1.5, -0.5, "0.5", None]
RATIO_CASES = (
    [("missing_ratio.train", {"missing_ratio": {"train": v}}, v) for v in BAD_RATIOS]
    + [("missing_ratio.val", {"missing_ratio": {"val": "0.7"}}, "0.7")]
    + [("test_ratio", {"test_ratio": v}, v) for v in BAD_RATIOS]
    + [("both_ratio", {"both_ratio": v}, v) for v in BAD_BOTH]
)


@pytest.mark.parametrize("key,updates,value", RATIO_CASES, ids=[f"{k}={v!r}" for k, _, v in RATIO_CASES])
def test_bad_ratios_name_the_key(tmp_path, key, updates, value):
    """Bad missing ratios are refused by the settings (the one place values are checked), naming the key the
    user typed and the value (its repr: a string shows its quotes), before any missing table is drawn."""
    import re

    from mdpl.config import make_config
    from mdpl.errors import ConfigError
    from mdpl.train.settings import Settings

    config = make_config(
        "task_finetune_food101", per_gpu_batchsize=1, missing_table_root=str(tmp_path / "tables"), **updates
    )
    pattern = rf"^config {re.escape(key)}={re.escape(repr(value))}: expected a number in \[0, 1\]$"
    with pytest.raises(ConfigError, match=pattern):
        Settings.from_config(config)
    assert not (tmp_path / "tables").exists()


# ---------------------------------------------------------------- records


def _append_many(root: str, worker: int, lines: int) -> None:
    from mdpl.config import make_config
    from mdpl.train.records import append_records
    from mdpl.train.settings import Settings

    settings = Settings.from_config(
        make_config(
            "task_finetune_food101",
            records_root=root,
            test_exp_name="e",
            test_type="both",
            test_ratio=worker / 10,
            per_gpu_batchsize=1,
        )
    )
    for i in range(lines):
        append_records(settings, {"food101/test/accuracy": i / 100})


@pytest.mark.slow  # starts other Python processes
def test_concurrent_record_appends_lose_no_line(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 50)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:  # each child imports mdpl.train.settings (torch and Lightning): ~15 s of CPU on its own
        p.join(timeout=300)
        assert p.exitcode == 0
    text = (tmp_path / "food101" / "food101_e_on_missing_both").read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 300
    expected = {f"missing ratio: {w / 10}, Accuracy: {i:.2f}" for w in range(6) for i in range(50)}
    assert set(lines) == expected  # every line whole, none lost, none doubled


def test_append_completes_a_torn_last_line(tmp_path):
    from mdpl.train.records import append_line_locked

    path = tmp_path / "records"
    path.write_text("missing ratio: 0.7, Accur")  # a writer died mid-line (older code, or a full disk)
    append_line_locked(path, "missing ratio: 0.7, Accuracy: 50.00")
    assert path.read_text() == "missing ratio: 0.7, Accur\nmissing ratio: 0.7, Accuracy: 50.00\n"
