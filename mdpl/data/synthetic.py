"""Synthetic raw datasets in the official raw layouts, for tests and demos (no real data needed).

    python -m mdpl.data.synthetic food101 R [--samples N] [--classes K] [--seed S] [--side-range MIN MAX]

writes R/Food101 (or R/mmimdb, R/Hatememes), so that `python make_arrow.py --dataset food101 --root R`
converts it directly. Every class has its own colour and shape in the image and its own keyword in the
text, so the label can be learnt from either modality alone and missing-modality effects show in training.
Same arguments and seed -> byte-identical files.

The text cue is strong on purpose (README, "Small runs on the CPU"): each class keyword (one WordPiece) is repeated
KEYWORD_REPEATS times among only a few filler words, so a small randomly initialised, frozen ViLT, whose
[CLS] sees other tokens only through near-uniform attention, still carries it, and every keyword fits in
a short max_text_len. MM-IMDb movies get 1-2 genres, the first in turn, so every genre has positives.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mdpl.data.writers.mmimdb import GENRES

# Class keywords: common single-token English words, one per class (101 needed for Food-101).
KEYWORDS = """
apple river stone cloud garden silver mountain window candle forest ocean paper bridge castle
dragon falcon guitar hammer island jacket kettle lemon marble needle orange pencil rabbit saddle
tiger violin wagon yellow zebra anchor bottle carpet desert engine feather glove harbor iron jungle
ladder mirror nest oven pillow queen rocket shadow tunnel umbrella valley wheel arrow basket cherry
dolphin eagle fountain ginger helmet ivory jelly lantern meadow nickel olive parrot quilt ribbon
shell tomato velvet walnut copper button cactus diamond emerald frost glacier honey lizard mango
onion pepper salmon thunder lotus vapor whale blossom crystal comet canyon orbit pearl prism maple
""".split()  # all single WordPieces of bert-base-uncased
FILLER = """the a of and with in on for from this that very some many fresh warm old new small large
good best home made easy quick simple recipe style classic great little day night one two""".split()
FOOD_NAMES = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad",
              "beignets", "bibimbap", "bread_pudding", "breakfast_burrito", "frozen_yogurt", "tacos"]  # fmt: skip

SPLIT_SHARES = (0.7, 0.15, 0.15)  # train, val, test
KEYWORD_REPEATS = 3  # each class keyword appears this many times in a text (MM-IMDb: per genre, 2)
FILLERS = (1, 4)  # filler words per text


def _colour(k: int, n: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(k / n, 0.8, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def _image(classes: list[int], n_classes: int, rng: random.Random, sides: tuple) -> Image.Image:
    """A noisy grey image with one vertical band per class in its class colour and a class-specific shape
    (circle, square or triangle by class). sides = ((min_w, max_w), (min_h, max_h))."""
    w, h = rng.randint(*sides[0]), rng.randint(*sides[1])
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 40, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(noise + 100)  # grey noise background: no cue outside the bands
    draw = ImageDraw.Draw(im)
    band = w / len(classes)
    for i, k in enumerate(classes):
        x0, x1 = int(i * band), int((i + 1) * band)
        y0, y1 = rng.randint(0, h // 4), h - rng.randint(0, h // 4)  # some noisy background stays visible
        draw.rectangle([x0, y0, x1, y1], fill=_colour(k, n_classes))
        cx, cy, r = (x0 + x1) // 2, rng.randint(h // 4, 3 * h // 4), max(2, min(x1 - x0, h) // 4)
        box = [cx - r, cy - r, cx + r, cy + r]
        inverse = tuple(255 - c for c in _colour(k, n_classes))
        if k % 3 == 0:
            draw.ellipse(box, fill=inverse)
        elif k % 3 == 1:
            draw.rectangle(box, fill=inverse)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), (cx, box[1])], fill=inverse)
    return im


def _text(classes: list[int], rng: random.Random, repeats: int = KEYWORD_REPEATS) -> str:
    """A few filler words with each class keyword inserted `repeats` times at random places."""
    out = [rng.choice(FILLER) for _ in range(rng.randint(*FILLERS))]
    for k in classes:
        for _ in range(repeats):
            out.insert(rng.randint(0, len(out)), KEYWORDS[k])
    return " ".join(out)


def _split_sizes(n: int) -> list[int]:
    if n < 3:
        raise ValueError(f"--samples must be at least 3 (one per split), got {n}")
    val, test = max(1, round(n * SPLIT_SHARES[1])), max(1, round(n * SPLIT_SHARES[2]))
    return [n - val - test, val, test]


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1))


def food101(root: Path, samples: int, classes: int, rng: random.Random, sides: tuple) -> Path:
    if not 1 <= classes <= len(KEYWORDS):
        raise ValueError(f"--classes must be in 1..{len(KEYWORDS)}, got {classes}")
    out = root / "Food101"
    names = [FOOD_NAMES[k] if k < len(FOOD_NAMES) else f"dish_{k}" for k in range(classes)]
    splits, texts, i = {}, {}, 0
    for split, size in zip(("train", "val", "test"), _split_sizes(samples)):
        splits[split] = []
        for _ in range(size):
            k = rng.randrange(classes)
            name = f"{names[k]}_{i}.jpg"
            i += 1
            folder = out / "images" / ("test" if split == "test" else "train") / names[k]
            folder.mkdir(parents=True, exist_ok=True)
            _image([k], classes, rng, sides).save(folder / name, quality=90)
            texts[name] = _text([k], rng)
            splits[split].append(name)
    _write_json(out / "class_idx.json", {n: k for k, n in enumerate(names)})
    _write_json(out / "text.json", texts)
    _write_json(out / "split.json", splits)
    return out


def mmimdb(root: Path, samples: int, classes: int, rng: random.Random, sides: tuple) -> Path:
    out = root / "mmimdb"
    n_genres = min(classes, len(GENRES))  # labels stay 23-wide; only the first n_genres occur
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    splits, i = {}, 0
    for split, size in zip(("train", "dev", "test"), _split_sizes(samples)):
        splits[split] = []
        for _ in range(size):
            # 1-2 of the first `classes` genres: the first in turn (every genre gets positives), maybe one more
            first = i % n_genres
            ids = sorted({first, rng.randrange(n_genres)} if rng.random() < 0.5 else {first})
            movie = f"{i:07d}"
            i += 1
            _image(ids, n_genres, rng, sides).save(out / "images" / f"{movie}.jpeg", quality=90)
            plots = [_text(ids, rng, 2) for _ in range(rng.randint(1, 3))]  # several plots per movie
            label = {"title": f"movie {movie}", "plot": plots, "genres": [GENRES[g] for g in ids]}
            _write_json(out / "labels" / f"{movie}.json", label)
            splits[split].append(movie)
    _write_json(out / "split.json", splits)
    return out


def hateful_memes(root: Path, samples: int, classes: int, rng: random.Random, sides: tuple) -> Path:
    data = root / "Hatememes" / "data"
    (data / "img").mkdir(parents=True, exist_ok=True)
    i = 0
    for split, size in zip(("train", "dev", "test"), _split_sizes(samples)):
        lines = []
        for _ in range(size):
            k = rng.randrange(2)
            img = f"img/{i:05d}.png"
            _image([k], 2, rng, sides).save(data / img)
            lines.append(json.dumps({"id": i, "img": img, "label": k, "text": _text([k], rng)}))
            i += 1
        (data / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    return root / "Hatememes"


GENERATORS = {"mmimdb": mmimdb, "food101": food101, "hateful_memes": hateful_memes}


def generate(
    dataset: str,
    root: str | Path,
    samples: int = 300,
    classes: int = 10,
    seed: int = 0,
    side_range: tuple[int, int] = (64, 192),
    size: tuple[int, int] | None = None,
) -> Path:
    """Write a synthetic raw `dataset` under `root` (the make_arrow --root); returns its dataset folder.

    Image width and height are drawn from `side_range`, or all images are `size` = (w, h) when given.
    `classes` is the number of Food-101 classes, or of MM-IMDb genres that occur (the first `classes` of the 23;
    labels stay 23 wide); Hateful Memes always has 2 labels.
    """
    if dataset not in GENERATORS:
        raise ValueError(f"dataset must be one of {sorted(GENERATORS)}, got {dataset!r}")
    if not 1 <= side_range[0] <= side_range[1]:
        raise ValueError(f"side range must satisfy 1 <= MIN <= MAX, got {side_range}")
    sides = ((size[0], size[0]), (size[1], size[1])) if size else (side_range, side_range)
    return GENERATORS[dataset](Path(root), samples, classes, random.Random(seed), sides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(GENERATORS))
    parser.add_argument("root", help="parent folder (the make_arrow --root)")
    parser.add_argument("--samples", type=int, default=300, help="samples (movies for mmimdb) over all splits")
    parser.add_argument("--classes", type=int, default=10, help="food101: classes; mmimdb: genres that occur (of 23)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side-range", type=int, nargs=2, default=(64, 192), metavar=("MIN", "MAX"),
                        help="image width and height are drawn uniformly from this range")  # fmt: skip
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"), help="fixed image size instead")
    args = parser.parse_args()
    size = tuple(args.size) if args.size else None
    out = generate(args.dataset, args.root, args.samples, args.classes, args.seed, tuple(args.side_range), size)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
