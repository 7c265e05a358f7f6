"""Datasets, transforms, collate and the datamodule on small synthetic data (DATA.md)."""

import copy
import io
import random

import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DistributedSampler, SequentialSampler
from torchvision import transforms as T

from mdpl.config import make_config
from mdpl.data.arrow import ArrowDataset
from mdpl.data.collate import Collator
from mdpl.data.datasets import Splits
from mdpl.data.missing import IMAGE_MISSING, TEXT_MISSING, apply_missing
from mdpl.data.synthetic import generate
from mdpl.data.tokenizers import TextTokenizer
from mdpl.data.transforms import PIXELBERT_MEAN_STD, PixelBert, keys_to_transforms, normalize_images, resized_hw
from mdpl.data.writers import WRITERS, convert
from mdpl.errors import ConfigError
from mdpl.train.datamodule import EpochSampler, FixedPermutation, MissingDataModule, loader
from mdpl.train.evaluate import GridData, Shard
from mdpl.train.settings import Settings

NAMES = {"food101": "Food101", "mmimdb": "mmimdb", "hateful_memes": "Hatefull_Memes"}
TASK = {"food101": "food101", "mmimdb": "mmimdb", "hateful_memes": "hatememes"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Arrow folders of three tiny synthetic datasets: {writer name: folder}."""
    root = tmp_path_factory.mktemp("raw")
    out = {}
    for name, n in [("food101", 20), ("mmimdb", 10), ("hateful_memes", 10)]:
        generate(name, root, samples=n, classes=4, side_range=(8, 40))
        out[name] = root / "arrow" / name
        convert(WRITERS[name], root, out[name])
    return out


def config_of(data, tmp_path, name="food101", **updates) -> dict:
    """The official defaults for one synthetic dataset (its task in loss_names), with `updates`."""
    loss_names = {"itm": 0, "mlm": 0, TASK[name]: 1, **updates.pop("loss_names", {})}
    base = dict(
        datasets=[NAMES[name]],
        data_root=str(data[name]),
        missing_table_root=str(tmp_path / "tables"),
        per_gpu_batchsize=4,
        num_workers=0,
        image_size=64,
        max_text_len=16,
    )
    return make_config(**{**base, **updates, "loss_names": loss_names})


def settings_of(data, tmp_path, name="food101", **updates) -> Settings:
    return Settings.from_config(config_of(data, tmp_path, name, **updates))


def build_dataset(settings: Settings, split: str, dataset: str | None = None) -> ArrowDataset:
    """The `split` dataset of settings.data.datasets[0] (or `dataset`) with its missing table (what a run builds:
    Splits, the tables drawn in the official order, one table per dataset)."""
    splits = Splits(settings.data)
    dataset = dataset or settings.data.datasets[0]
    return splits.dataset(split, dataset, [splits.tables_for()[dataset, split]])


def build_datamodule(settings: Settings) -> MissingDataModule:
    return MissingDataModule(Splits(settings.data))


def collator(settings: Settings, substitute: bool = True) -> Collator:
    return Collator(TextTokenizer(settings.data.tokenizer, settings.data.max_text_len), substitute)


def ordered_test_loader(settings: Settings):
    """A loader over the test split of settings.data.datasets[0], in order, with the training collate."""
    dataset = build_dataset(settings, "test")
    return loader(dataset, settings.data, SequentialSampler(dataset), collator(settings))


def codes(dataset: ArrowDataset) -> list[int]:
    """Each row's code in the dataset's (one) missing table."""
    return [c for (c,) in dataset.codes]


def decoded_view(dataset: ArrowDataset, row: int, size: int = 64) -> torch.Tensor:
    """The row's image decoded from the Arrow bytes and resized, independently of ArrowDataset."""
    img = Image.open(io.BytesIO(dataset.images[row].as_py())).convert("RGB")
    return PixelBert(size)(img)


def normalised(view: torch.Tensor) -> torch.Tensor:
    return view.float().div(255).sub(0.5).div(0.5)  # ToTensor + Normalize, as torchvision


@pytest.fixture
def decodes(monkeypatch):
    """A list that gets one entry per image decode (PIL's ImageFile.load) while the test runs."""
    calls = []
    real = ImageFile.ImageFile.load

    def load(self):
        calls.append(self)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


@pytest.mark.parametrize("w,h,out", [(500, 500, (384, 384)), (300, 450, (576, 384)), (1000, 300, (192, 608))])
def test_pixelbert_resize_rule_examples(w, h, out):
    assert resized_hw(w, h, 384) == out
    assert PixelBert(384)(Image.new("RGB", (w, h))).shape == (3, *out)


def test_extreme_aspect_ratio_is_clamped_to_one_patch():
    assert resized_hw(4000, 100, 384) == (32, 608)
    assert resized_hw(100, 4000, 384) == (608, 32)


def test_pixelbert_matches_torchvision_bitwise():
    img = Image.fromarray(torch.randint(0, 256, (37, 53, 3), dtype=torch.uint8).numpy())
    nh, nw = resized_hw(53, 37, 64)
    ref = T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])(img.resize((nw, nh), Image.BICUBIC))
    pixels = PixelBert(64)(img)
    assert pixels.dtype == torch.uint8  # a quarter of the float32 bytes through the loader
    assert torch.equal(normalize_images(pixels[None], torch.tensor([[nh, nw]]), PIXELBERT_MEAN_STD)[0], ref)


def test_an_image_already_at_its_output_size_is_not_resampled():
    img = Image.fromarray(torch.randint(0, 256, (64, 96, 3), dtype=torch.uint8).numpy())  # 96 x 64 (w x h)
    assert resized_hw(96, 64, 64) == (64, 96)
    assert torch.equal(PixelBert(64)(img), T.PILToTensor()(img))


def test_uint8_batches_normalise_to_the_float_canvas_bitwise(data, tmp_path, decodes):
    """The loader ships uint8 canvases plus each image's size; normalising them on the model's device with the
    missing codes gives exactly the float32 canvas the official loader built: normalised images on zeros, a
    missing image all ones (and the loader never decodes a missing image)."""
    dm = build_datamodule(settings_of(data, tmp_path, missing_ratio={"train": 0.5, "val": 0.5, "test": 0.5}))
    dm.setup()
    ds = dm.datasets["train"]
    decodes.clear()
    items = []
    for j in range(6):
        before = len(decodes)
        items.append(ds[j])
        assert (len(decodes) > before) == (items[-1]["codes"] != (IMAGE_MISSING,)), j  # decoded iff not missing
    batch = dm.collate(items)
    canvas = batch["image"][0]
    assert canvas.dtype == torch.uint8
    assert {it["codes"][0] for it in items} >= {0, 2}
    expected = torch.zeros(canvas.shape)
    for b, it in enumerate(items):
        row, _ = ds.index[b]
        view = normalised(decoded_view(ds, row))  # the official view, decoded here from the Arrow bytes
        if it["codes"] == (IMAGE_MISSING,):
            view = torch.ones_like(view)  # a missing image is all ones after normalising
        expected[b, :, : view.shape[1], : view.shape[2]] = view
        assert list(batch["image_hw"][b]) == list(view.shape[1:])
    # the pixels keep PIL's H x W x 3 order through the loader; the transpose happens in normalize_images
    assert canvas.is_contiguous(memory_format=torch.channels_last)
    out = normalize_images(canvas, batch["image_hw"], PIXELBERT_MEAN_STD, batch["missing_type"] == IMAGE_MISSING)
    assert out.is_contiguous() and torch.equal(out, expected)


def test_image_views_keep_the_pixel_row_layout(data, tmp_path):
    """Decoded views are H x W x 3 in memory (3 x H x W views of it), so the collate copies whole pixel rows
    into the channels-last canvas; a missing image, not decoded, is zeros of the transformed shape (the package
    ships them as a zero-stride view, without memory of their own)."""
    dm = build_datamodule(settings_of(data, tmp_path, missing_ratio={"train": 0.5, "val": 0.5, "test": 0.5}))
    dm.setup()
    ds = dm.datasets["train"]
    items = [ds[j] for j in range(8)]
    assert {it["codes"][0] for it in items} >= {0, 2}
    for j, it in enumerate(items):
        (view,) = it["image"]
        assert view.shape == decoded_view(ds, ds.index[j][0]).shape and view.shape[0] == 3
        if it["codes"] == (IMAGE_MISSING,):  # zeros, either in that layout or with no memory of their own
            assert (view == 0).all() and (view.permute(1, 2, 0).is_contiguous() or view.stride() == (0, 0, 0))
        else:
            assert view.permute(1, 2, 0).is_contiguous()
    assert dm.collate(items)["image"][0].is_contiguous(memory_format=torch.channels_last)


def test_worker_batches_equal_main_process_batches(data, tmp_path):
    """A loader worker builds the canvas in shared memory (channels-last, like the main-process collate);
    the batches are the same either way."""
    batches = []
    for workers in (0, 1):
        batches.append(next(iter(ordered_test_loader(settings_of(data, tmp_path, num_workers=workers)))))
    main, worker = batches
    assert worker["image"][0].is_contiguous(memory_format=torch.channels_last)
    for key in ("image_hw", "text_ids", "text_masks", "label", "missing_type", "codes"):
        assert torch.equal(main[key], worker[key]), key
    assert torch.equal(main["image"][0], worker["image"][0])


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P"])
def test_non_rgb_images_are_converted_as_pil_converts_them(mode):
    rgb = Image.fromarray(torch.randint(0, 256, (40, 30, 3), dtype=torch.uint8).numpy())
    buffer = io.BytesIO()
    rgb.convert(mode).save(buffer, format="JPEG" if mode == "CMYK" else "PNG")
    table = pa.table({"image": [buffer.getvalue()], "text": [["a"]], "label": [0]})
    ds = ArrowDataset(table, "text", keys_to_transforms(["pixelbert"], 64), [torch.zeros(1)])
    (view,) = ds[0]["image"]
    decoded = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    nh, nw = resized_hw(30, 40, 64)
    assert torch.equal(view, T.PILToTensor()(decoded.resize((nw, nh), Image.BICUBIC)))


def test_randaug_key_keeps_the_resize_rule():
    random.seed(0)
    (t,) = keys_to_transforms(["pixelbert_randaug"], 64)
    assert t(Image.new("RGB", (50, 100), (10, 200, 30))).shape == (3, 96, 32)  # 128x64 capped at 106
    for key in ("train_transform_keys", "val_transform_keys"):  # an unknown key is refused by the settings
        with pytest.raises(ConfigError, match=rf"config {key}=\['nope'\]"):
            Settings.from_config(make_config("task_finetune_food101", per_gpu_batchsize=1, **{key: ["nope"]}))


def test_missing_text_and_image_items_and_collate(data, tmp_path, decodes):
    complete = build_dataset(settings_of(data, tmp_path, missing_ratio={"train": 0, "val": 0, "test": 0}), "train")
    text = build_dataset(settings_of(data, tmp_path, missing_type={"train": "text", "val": "text", "test": "text"},
                                     missing_ratio={"train": 1.0, "val": 0, "test": 0}), "train")  # fmt: skip
    image = build_dataset(settings_of(data, tmp_path, missing_ratio={"train": 1.0, "val": 0, "test": 0}), "train")
    a, t = complete[3], text[3]
    decodes.clear()
    i = image[3]
    assert not decodes  # the missing image is not decoded
    assert (a["codes"], t["codes"], i["codes"]) == ((0,), (1,), (2,))
    assert t["text"] == a["text"] != ""  # items carry the complete text: the collate substitutes it
    assert torch.equal(t["image"][0], a["image"][0])
    assert i["image"][0].shape == a["image"][0].shape and (i["image"][0] == 0).all()  # zeros: never decoded
    assert i["text"] == a["text"] and a["label"].dtype == torch.long

    collate = collator(settings_of(data, tmp_path))
    batch = collate([a, t, i])
    h = max(x["image"][0].shape[1] for x in (a, t, i))
    w = max(x["image"][0].shape[2] for x in (a, t, i))
    assert len(batch["image"]) == 1 and batch["image"][0].shape == (3, 3, h, w)
    ah, aw = a["image"][0].shape[1:]
    assert torch.equal(batch["image"][0][0, :, :ah, :aw], a["image"][0])
    assert (batch["image"][0][0, :, ah:, :] == 0).all() and (batch["image"][0][0, :, :, aw:] == 0).all()
    assert batch["text_ids"].shape == batch["text_masks"].shape == (3, 16)
    assert batch["text_ids"][1].tolist() == [101, 102] + [0] * 14  # "" -> [CLS] [SEP] pads
    assert batch["text_masks"][1].tolist() == [1, 1] + [0] * 14
    keys = {"image", "image_hw", "text_ids", "text_masks", "empty_ids", "empty_masks", "label", "codes", "missing_type"}
    assert set(batch) == keys  # no MLM inputs, no raw strings
    assert batch["image_hw"].tolist() == [list(x["image"][0].shape[1:]) for x in (a, t, i)]
    assert batch["missing_type"].tolist() == [0, 1, 2] and batch["missing_type"].dtype == torch.long
    assert batch["codes"].tolist() == [[0, 1, 2]]
    assert batch["label"].dtype == torch.long and batch["label"].shape == (3,)
    ids, masks = TextTokenizer("bert-base-uncased", 16)([a["text"]])
    for b in (0, 2):  # the complete text, for the complete sample and the one missing its image
        assert torch.equal(batch["text_ids"][b], ids[0]) and torch.equal(batch["text_masks"][b], masks[0])
    assert "text_ids_mlm" not in batch

    # once normalised with the missing codes: the official values (normalised pixels, ones in a missing image)
    out = normalize_images(batch["image"][0], batch["image_hw"], PIXELBERT_MEAN_STD, batch["missing_type"] == 2)
    view = normalised(decoded_view(complete, 3))
    vh, vw = view.shape[1:]
    for b in (0, 1, 2):
        inside = torch.ones_like(view) if b == 2 else view  # 1.0 inside the missing image
        assert torch.equal(out[b, :, :vh, :vw], inside), b
        assert (out[b, :, vh:] == 0).all() and (out[b, :, :, vw:] == 0).all(), b  # 0 outside every image

    # without substitution (evaluation) the batch holds the complete inputs; apply_missing gives the same batch
    plain = collator(settings_of(data, tmp_path), substitute=False)([a, t, i])
    assert "missing_type" not in plain and torch.equal(plain["text_ids"][1], ids[0])
    applied = apply_missing(plain, plain["codes"][0])
    for key in ("text_ids", "text_masks", "missing_type", "image_hw", "label"):
        assert torch.equal(applied[key], batch[key]), key


def test_no_mlm_keys_even_with_mlm_in_loss_names(data, tmp_path):
    """No objective reads MLM inputs, so none are drawn (mlm in loss_names is an unused official key)."""
    dm = build_datamodule(settings_of(data, tmp_path, loss_names={"mlm": 1}))
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert not any("mlm" in k for k in batch) and "text_labels" not in batch


def test_mmimdb_one_sample_per_plot_row_major(data, tmp_path):
    cfg = settings_of(data, tmp_path, "mmimdb", missing_type={"train": "both", "val": "both", "test": "both"})
    ds = build_dataset(cfg, "train")
    expected = [(r, k) for r, plots in enumerate(ds.texts) for k in range(len(plots))]
    assert len(ds) == len(expected) > len(ds.texts)  # the synthetic movies have 1-3 plots
    items = [ds[j] for j in range(len(ds))]
    for item, (r, k) in zip(items, expected):
        assert item["codes"] == ds.codes[r]  # row-level missing status
        assert item["text"] == ds.texts[r][k]  # the complete plot (the collate substitutes a missing text)
        assert torch.equal(item["label"], ds.labels[r]) and item["label"].dtype == torch.float32
    assert set(codes(ds)) == {0, 1, 2}
    batch = collator(cfg)(items)
    tokenize = TextTokenizer("bert-base-uncased", 16)
    for b, (r, k) in enumerate(expected):
        ids, _ = tokenize(["" if ds.codes[r] == (TEXT_MISSING,) else ds.texts[r][k]])
        assert torch.equal(batch["text_ids"][b], ids[0]), b
    assert next(iter(ordered_test_loader(cfg)))["label"].shape == (min(4, len(build_dataset(cfg, "test"))), 23)

    one = build_dataset(settings_of(data, tmp_path, "mmimdb", mmimdb_one_plot=True), "train")
    assert len(one) == len(one.texts) and [one[j]["text"] for j in range(len(one))] == [t[0] for t in one.texts]


def test_hatememes_loads(data, tmp_path):
    dm = build_datamodule(settings_of(data, tmp_path, "hateful_memes"))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].dtype == torch.long and set(batch["label"].tolist()) <= {0, 1}


def test_setup_reproduces_the_official_table_sequence(data, tmp_path):
    cfg = settings_of(data, tmp_path, missing_type={"train": "image", "val": "text", "test": "both"},
                      missing_ratio={"train": 0.7, "val": 0.5, "test": 0.6})  # fmt: skip
    random.seed(cfg.data.seed + 1)  # official draws use their own stream seeded with the run seed
    dm = build_datamodule(cfg)
    dm.setup("fit")
    n = {s: dm.datasets[s].labels.shape[0] for s in ("train", "val", "test")}
    random.seed(cfg.data.seed)  # what pl.seed_everything did to `random` officially
    train = random.sample(range(n["train"]), int(n["train"] * 0.7))
    val = random.sample(range(n["val"]), int(n["val"] * 0.5))
    test = random.sample(range(n["test"]), int(n["test"] * 0.6))
    test_img = random.sample(test, int(len(test) * 0.5))
    got = {s: codes(dm.datasets[s]) for s in n}
    assert sorted(r for r, c in enumerate(got["train"]) if c == 2) == sorted(train)
    assert sorted(r for r, c in enumerate(got["val"]) if c == 1) == sorted(val)
    assert sorted(r for r, c in enumerate(got["test"]) if c == 2) == sorted(test_img)
    assert sorted(r for r, c in enumerate(got["test"]) if c > 0) == sorted(test)
    names = sorted(p.name for p in (tmp_path / "tables").iterdir())
    assert names == [
        "food101_test_missing_both_06.pt", "food101_train_missing_image_07.pt", "food101_val_missing_text_05.pt"
    ]  # fmt: skip


def test_prepare_data_draws_the_tables_that_every_rank_then_loads(data, tmp_path):
    # Lightning calls prepare_data on local rank 0 only, before any rank's setup
    settings = dict(
        missing_type={"train": "image", "val": "text", "test": "both"},
        missing_ratio={"train": 0.7, "val": 0.5, "test": 0.6},
    )
    random.seed(42)
    single = build_datamodule(settings_of(data, tmp_path / "single", **settings))
    single.setup("fit")  # one process: draws train, val, test in turn
    random.seed(42)
    build_datamodule(settings_of(data, tmp_path / "ddp", **settings)).prepare_data()  # rank 0
    random.seed(7)  # another rank's `random` is elsewhere in its stream: it must draw nothing
    other_rank = build_datamodule(settings_of(data, tmp_path / "ddp", **settings))
    other_rank.setup("fit")
    for split in ("train", "val", "test"):
        assert other_rank.datasets[split].codes == single.datasets[split].codes, split


def test_test_overrides_touch_val_and_test_only(data, tmp_path):
    raw = config_of(data, tmp_path, test_ratio=0.5, test_type="text")
    before = copy.deepcopy(raw)
    settings = Settings.from_config(raw)
    assert raw == before  # the caller's dict is left alone
    ratios, types = {"train": 0.7, "val": 0.5, "test": 0.5}, {"train": "image", "val": "text", "test": "text"}
    assert settings.data.missing_ratio == ratios and settings.data.missing_type == types
    assert settings.config["missing_ratio"] == ratios and settings.config["missing_type"] == types  # recorded
    dm = build_datamodule(settings)
    dm.setup()
    assert set(codes(dm.datasets["test"])) == {0, 1} and set(codes(dm.datasets["train"])) == {0, 2}


def test_evaluation_setting_leaves_config_alone(data, tmp_path):
    """An evaluation at another (ratio, type) setting (the evaluator's path, which replaced build_test_loader)
    leaves the settings alone and reads the test split in order with that setting's table."""
    cfg = settings_of(data, tmp_path)
    before, data_before = copy.deepcopy(cfg.config), cfg.data
    splits = Splits(cfg.data)
    drawn = splits.tables_for(cfg.data.at(1.0, "text"))
    assert cfg.config == before and cfg.data == data_before
    assert cfg.data.missing_ratio["test"] == 0.7 and cfg.data.missing_type["test"] == "image"
    loader = GridData(splits, [{"Food101": drawn["Food101", "test"]}]).test_dataloader()
    assert set(codes(loader.dataset)) == {1} and isinstance(loader.sampler, Shard)
    assert list(loader.sampler) == list(range(len(loader.dataset)))  # in order
    assert len(loader.dataset) == 3  # the synthetic test split of 20 samples


def torch_order(dataset, seed: int, epoch: int = 0) -> list[int]:
    """torch's DistributedSampler(shuffle=True, seed) order at `epoch`, one process."""
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_loaders_shuffle_train_and_val_in_the_official_orders(data, tmp_path):
    dm = build_datamodule(settings_of(data, tmp_path))
    dm.setup()
    train, n = list(dm.train_dataloader().sampler), len(dm.datasets["train"])
    assert sorted(train) == list(range(n)) and train != list(range(n))  # every sample once, shuffled
    # val: one fixed permutation, DistributedSampler(shuffle=True, seed=0) at epoch 0, in every epoch and run
    val_set = dm.datasets["val"]
    official = torch_order(val_set, 0)
    assert sorted(official) == list(range(len(val_set))) and official != list(range(len(val_set)))
    for seed in (42, 7):  # another run (another seed) gives the same order
        other = build_datamodule(settings_of(data, tmp_path, seed=seed))
        other.setup()
        sampler = other.val_dataloader().sampler
        assert isinstance(sampler, FixedPermutation)
        for epoch in (0, 1, 5):  # Lightning sets the epoch on every loader; the order stays
            sampler.set_epoch(epoch)
            assert list(sampler) == official, (seed, epoch)
    # test (the evaluator's loader): in order
    test = GridData(Splits(dm.cfg), [{"Food101": torch.zeros(len(dm.datasets["test"]))}]).test_dataloader()
    assert list(test.sampler) == list(range(len(dm.datasets["test"])))


def test_train_order_official_is_seed_0_at_any_run_seed_and_seeded_follows_the_seed(data, tmp_path):
    def order(seed: int, train_order: str, epoch: int) -> list[int]:
        dm = build_datamodule(settings_of(data, tmp_path, seed=seed, train_order=train_order))
        dm.setup()
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, EpochSampler)
        sampler.set_epoch(epoch)
        return list(sampler)

    dm = build_datamodule(settings_of(data, tmp_path))
    dm.setup()
    train = dm.datasets["train"]
    assert dm.cfg.train_order == "official"  # the default
    for epoch in (0, 1):
        official = torch_order(train, 0, epoch)
        assert order(42, "official", epoch) == order(7, "official", epoch) == official, epoch
        for seed in (42, 7):
            seeded = order(seed, "seeded", epoch)
            assert seeded == torch_order(train, seed, epoch) and seeded != official, (seed, epoch)
    assert torch_order(train, 0, 0) != torch_order(train, 0, 1)  # a new permutation each epoch


def test_simulate_missing_applies_to_complete_training_rows_only(data, tmp_path):
    zero = {"train": 0, "val": 0, "test": 0}
    cfg = settings_of(data, tmp_path, simulate_missing=True, missing_ratio=zero)
    random.seed(0)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert {train[j % len(train)]["codes"] for j in range(60)} == {(0,), (1,), (2,)}
    assert {val[j]["codes"] for j in range(len(val))} == {(0,)}


def test_missing_arrow_file_names_the_make_arrow_command(tmp_path, data):
    cfg = settings_of(data, tmp_path, data_root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"food101_train\.arrow.*make_arrow\.py --dataset food101"):
        build_dataset(cfg, "train")


def test_mismatched_table_is_a_clear_error(data, tmp_path):
    cfg = settings_of(data, tmp_path)
    (tmp_path / "tables").mkdir()
    torch.save(torch.zeros(3), tmp_path / "tables" / "food101_train_missing_image_07.pt")
    with pytest.raises(ValueError, match="food101_train_missing_image_07.pt has 3 rows"):
        build_dataset(cfg, "train")


def test_batch_size_must_be_set(data, tmp_path):
    with pytest.raises(ConfigError, match="per_gpu_batchsize"):
        build_datamodule(settings_of(data, tmp_path, per_gpu_batchsize=0))


def test_several_datasets_are_concatenated(data, tmp_path):
    folder = tmp_path / "both"
    folder.mkdir()
    for name in ("food101", "hateful_memes"):
        for f in data[name].iterdir():
            (folder / f.name).symlink_to(f)
    both = dict(datasets=["Food101", "Hatefull_Memes"], data_root=str(folder))
    with pytest.raises(ConfigError, match="datasets"):  # two datasets need both tasks in loss_names
        settings_of(data, tmp_path, **both)
    cfg = settings_of(data, tmp_path, **both, loss_names={"hatememes": 1})
    dm = build_datamodule(cfg)
    dm.setup()
    food, memes = (build_dataset(settings_of(data, tmp_path, n), "test") for n in ("food101", "hateful_memes"))
    assert len(dm.datasets["test"]) == len(food) + len(memes)
    assert dm.datasets["test"][len(food)]["text"] == memes[0]["text"]


def test_worker_batches_equal_in_process_batches(data, tmp_path):
    # In a worker the image canvas is allocated in shared memory; the batch must not change.
    batches = []
    for workers in (0, 1):
        dm = build_datamodule(settings_of(data, tmp_path, num_workers=workers))
        dm.setup()
        batches.append(next(iter(dm.val_dataloader())))
    a, b = batches
    assert a.keys() == b.keys()
    assert torch.equal(a["image"][0], b["image"][0]) and torch.equal(a["text_ids"], b["text_ids"])
    assert torch.equal(a["missing_type"], b["missing_type"]) and torch.equal(a["label"], b["label"])
