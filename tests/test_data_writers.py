"""make_arrow: raw layouts -> arrow files with the official names, columns, types, row order and labels."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from mdpl.data.synthetic import generate
from mdpl.data.writers import WRITERS, BadImageError, convert
from mdpl.data.writers.mmimdb import GENRES

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def test_genres_are_the_official_23_in_order():
    assert len(GENRES) == 23
    assert GENRES[:6] == ["Drama", "Comedy", "Romance", "Thriller", "Crime", "Action"]
    assert GENRES[-3:] == ["Sport", "Short", "Film-Noir"]


def test_food101_schema_order_labels_and_skips(tmp_path):
    raw = generate("food101", tmp_path / "raw", samples=12, classes=3, side_range=(8, 16))
    texts = json.loads((raw / "text.json").read_text())
    splits = json.loads((raw / "split.json").read_text())
    dropped = splits["train"][1]
    del texts[dropped]  # officially skipped, and counted
    (raw / "text.json").write_text(json.dumps(texts))

    reports = convert(WRITERS["food101"], tmp_path / "raw", tmp_path / "out")
    assert [r.arrow_path.name for r in reports] == ["food101_train.arrow", "food101_val.arrow", "food101_test.arrow"]
    assert reports[0].skipped_official == [dropped]

    class_idx = json.loads((raw / "class_idx.json").read_text())
    for report, split in zip(reports, ["train", "val", "test"]):
        table = read(report.arrow_path)
        assert table.schema.names == ["image", "text", "label", "image_id", "split"]
        assert [str(t) for t in table.schema.types] == ["binary", "list<item: string>", "int64", "string", "string"]
        ids = [s for s in splits[split] if s != dropped]
        assert table.column("image_id").to_pylist() == ids  # split.json order
        assert table.column("label").to_pylist() == [class_idx[s[: s.rindex("_")]] for s in ids]
        assert table.column("text").to_pylist() == [[texts[s]] for s in ids]
        assert set(table.column("split").to_pylist()) == {split}
        folder = "test" if split == "test" else "train"
        first = ids[0]
        image = raw / "images" / folder / first[: first.rindex("_")] / first
        assert table.column("image")[0].as_py() == image.read_bytes()


def test_mmimdb_schema_order_and_multi_hot_labels(tmp_path):
    raw = generate("mmimdb", tmp_path / "raw", samples=6, side_range=(8, 16))
    reports = convert(WRITERS["mmimdb"], tmp_path / "raw", tmp_path / "out")
    assert [r.arrow_path.name for r in reports] == ["mmimdb_train.arrow", "mmimdb_dev.arrow", "mmimdb_test.arrow"]
    splits = json.loads((raw / "split.json").read_text())
    table = read(reports[0].arrow_path)
    assert table.schema.names == ["image", "plots", "label", "genres", "image_id", "split"]
    assert [str(t) for t in table.schema.types] == [
        "binary", "list<item: string>", "list<item: int64>", "list<item: string>", "string", "string"
    ]  # fmt: skip
    assert table.column("image_id").to_pylist() == splits["train"]
    for row in table.to_pylist():
        info = json.loads((raw / "labels" / f"{row['image_id']}.json").read_text())
        assert row["plots"] == info["plot"] and row["genres"] == info["genres"]
        assert row["label"] == [int(g in info["genres"]) for g in GENRES]
        assert row["split"] == "train"


def test_hatememes_schema_order(tmp_path):
    raw = generate("hateful_memes", tmp_path / "raw", samples=6, side_range=(8, 16))
    reports = convert(WRITERS["hateful_memes"], tmp_path / "raw", tmp_path / "out")
    assert [r.arrow_path.name for r in reports] == [
        "hatememes_train.arrow", "hatememes_dev.arrow", "hatememes_test.arrow"
    ]  # fmt: skip
    lines = [json.loads(x) for x in (raw / "data" / "dev.jsonl").read_text().splitlines()]
    table = read(reports[1].arrow_path)
    assert table.schema.names == ["image", "text", "label", "split"]
    assert [str(t) for t in table.schema.types] == ["binary", "list<item: string>", "int64", "string"]
    assert table.column("text").to_pylist() == [[x["text"]] for x in lines]
    assert table.column("label").to_pylist() == [x["label"] for x in lines]
    assert table.column("image")[0].as_py() == (raw / "data" / lines[0]["img"]).read_bytes()


def test_missing_files_and_split_entries_are_named(tmp_path):
    raw = generate("mmimdb", tmp_path / "raw", samples=4, side_range=(8, 16))
    movie = json.loads((raw / "split.json").read_text())["dev"][0]
    (raw / "images" / f"{movie}.jpeg").unlink()
    with pytest.raises(FileNotFoundError, match=f"{movie}.jpeg"):
        convert(WRITERS["mmimdb"], tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything is written: no train, no temp file

    (raw / "labels" / f"{movie}.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"labels/{movie}.json"):
        convert(WRITERS["mmimdb"], tmp_path / "raw", tmp_path / "out")

    (raw / "split.json").write_text(json.dumps({"train": [], "test": []}))
    with pytest.raises(KeyError, match="split.json.*'dev'"):
        convert(WRITERS["mmimdb"], tmp_path / "raw", tmp_path / "out")

    with pytest.raises(FileNotFoundError, match="Hatememes"):
        convert(WRITERS["hateful_memes"], tmp_path / "raw", tmp_path / "out")


def test_bad_image_bytes_fail_or_are_skipped_and_listed(tmp_path):
    raw = generate("hateful_memes", tmp_path / "raw", samples=8, side_range=(8, 16))
    lines = [json.loads(x) for x in (raw / "data" / "train.jsonl").read_text().splitlines()]
    bad = raw / "data" / lines[2]["img"]
    good = bad.read_bytes()
    bad.write_bytes(good[:40])  # truncated PNG
    with pytest.raises(BadImageError, match=str(bad)):
        convert(WRITERS["hateful_memes"], tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    reports = convert(WRITERS["hateful_memes"], tmp_path / "raw", tmp_path / "out", skip_bad=True)
    assert reports[0].skipped_bad == [lines[2]["img"]]
    assert read(reports[0].arrow_path).num_rows == len(lines) - 1
    assert (tmp_path / "out" / "hatememes_train_skipped.txt").read_text() == f"{lines[2]['img']}\n"

    bad.write_bytes(good)  # repaired: the listing of the old file goes with it
    convert(WRITERS["hateful_memes"], tmp_path / "raw", tmp_path / "out", skip_bad=True)
    assert not (tmp_path / "out" / "hatememes_train_skipped.txt").exists()


@pytest.mark.slow  # starts other Python processes
def test_cli_uses_official_default_output_folder(tmp_path):
    generate("hateful_memes", tmp_path / "raw", samples=3, side_range=(8, 16))
    work = tmp_path / "cwd"
    work.mkdir()
    cmd = [sys.executable, str(ROOT / "make_arrow.py"), "--dataset", "hateful_memes", "--root", str(tmp_path / "raw")]
    subprocess.run(cmd, cwd=work, check=True, capture_output=True)
    assert sorted(p.name for p in (work / "datasets" / "Hatefull_Memes").iterdir()) == [
        "hatememes_dev.arrow", "hatememes_test.arrow", "hatememes_train.arrow"
    ]  # fmt: skip


def test_synthetic_is_deterministic(tmp_path):
    a = generate("food101", tmp_path / "a", samples=6, classes=2, seed=3, side_range=(8, 16))
    b = generate("food101", tmp_path / "b", samples=6, classes=2, seed=3, side_range=(8, 16))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_unlabelled_hateful_memes_test_split_points_to_test_seen(tmp_path):
    raw = generate("hateful_memes", tmp_path / "raw", samples=3, side_range=(8, 16))
    line = json.loads((raw / "data" / "test.jsonl").read_text())
    del line["label"]  # the challenge's test.jsonl has no labels
    (raw / "data" / "test.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(KeyError, match=r"test\.jsonl:1: missing \['label'\].*test_seen\.jsonl"):
        convert(WRITERS["hateful_memes"], tmp_path / "raw", tmp_path / "out")


def test_truncated_json_is_named(tmp_path):
    raw = generate("food101", tmp_path / "raw", samples=3, classes=1, side_range=(8, 16))
    text = (raw / "split.json").read_text()
    (raw / "split.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"split\.json: not valid JSON.*truncated"):
        convert(WRITERS["food101"], tmp_path / "raw", tmp_path / "out")


def test_corrupt_jsonl_line_is_named(tmp_path):
    raw = generate("hateful_memes", tmp_path / "raw", samples=6, side_range=(8, 16))
    with open(raw / "data" / "train.jsonl", "a") as f:
        f.write('{"img": "img/x.png", "text": \n')
    with pytest.raises(ValueError, match=r"train\.jsonl:\d+: not a JSON object"):
        convert(WRITERS["hateful_memes"], tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
