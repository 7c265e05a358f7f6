"""The one configuration boundary: the sacred dict becomes frozen dataclasses, every value checked here and only
here (an error names the key, the value and what is allowed).

`Settings.from_config(config)` applies test_ratio / test_type to the val and test missing settings and builds
the ModelConfig (mdpl.model.config: what a checkpoint stores and evaluation rebuilds), the DataConfig
(mdpl.data.datasets), the OptimConfig and the RunConfig. Files are checked separately (`check_files`), so a
checkpoint's config can be read on a machine without its data.
"""

from __future__ import annotations

import copy
import numbers
import os
from dataclasses import dataclass, fields

from mdpl.config import plain
from mdpl.data.datasets import DataConfig, arrow_path
from mdpl.data.tasks import BY_DATASET, SPLITS, TASKS, task_of_dataset
from mdpl.data.writers import WRITERS
from mdpl.errors import ConfigError, MissingFileError, fail
from mdpl.model.config import ModelConfig
from mdpl.model.hub import resolve_weights_path
from mdpl.model.model import BACKBONES
from mdpl.model.prompts import PROMPT_METHODS

MISSING_TYPES = ("text", "image", "both")
PRECISIONS = {"16": "16-mixed", "16-mixed": "16-mixed", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
              "32": "32-true", "32-true": "32-true", "64": "64-true", "64-true": "64-true"}  # fmt: skip
# model keys that change how a trained model computes, not its parameters: evaluation may set them on the
# command line (a note is printed); every other model key comes from the checkpoint
INFERENCE_OPTIONS = ("patch_order", "masked_query", "fp32_similarity", "trim_text", "max_image_len",
                     "dcp_masked_prompt_attention")  # fmt: skip
MODEL_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name != "tasks") + ("loss_names",)


@dataclass(frozen=True)
class OptimConfig:
    optim_type: str
    learning_rate: float
    weight_decay: float
    decay_power: float | str
    max_epoch: int
    max_steps: int | None
    warmup_steps: int | float
    end_lr: float
    lr_mult: float
    batch_size: int
    lr_past_horizon: str  # "official": the cosine rises again past max_steps; "hold": it stays at 0


@dataclass(frozen=True)
class RunConfig:
    exp_name: str
    seed: int
    log_dir: str
    load_path: str
    vit_weights: str
    resume_from: str | None
    test_only: bool
    finetune_first: bool
    test_exp_name: str | None
    records_root: str
    num_gpus: int
    num_nodes: int
    cpu_processes: int
    precision: str  # Lightning's name, e.g. "16-mixed"
    val_check_interval: float
    fast_dev_run: bool
    trust_checkpoint: bool
    torch_compile: bool


@dataclass(frozen=True)
class Settings:
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    run: RunConfig
    config: dict  # the resolved sacred dict (test overrides applied): what hparams and run folders record

    @classmethod
    def from_config(cls, config: dict) -> Settings:
        c = resolve(config)
        model = model_config(c)
        return cls(model, data_config(c, model), optim_config(c), run_config(c), c)

    @property
    def devices(self) -> tuple[str, int]:
        """(accelerator, processes per node): num_gpus GPUs; num_gpus=0 runs cpu_processes CPU processes."""
        if self.run.num_gpus > 0:
            return "gpu", self.run.num_gpus
        return "cpu", self.run.cpu_processes

    @property
    def accumulation(self) -> int:
        """batch_size // (per_gpu_batchsize x devices x nodes) batches per optimizer step (official)."""
        return self.optim.batch_size // (self.data.per_gpu_batchsize * self.devices[1] * self.run.num_nodes)


def resolve(config: dict) -> dict:
    """A plain copy of sacred's read-only config with test_ratio / test_type applied to val and test (never
    train), as officially, so that hparams and records carry the settings actually used; keys newer than a
    saved config get their defaults."""
    c = copy.deepcopy(plain(config))
    for key, default in NEWER_KEYS.items():
        c.setdefault(key, default)
    for key, table in (("test_ratio", "missing_ratio"), ("test_type", "missing_type")):
        if c[key] is not None and isinstance(c[table], dict):
            c[table] = {**c[table], "val": c[key], "test": c[key]}
    return c


# keys added after some checkpoints were saved, with the value that reproduces how those were trained
NEWER_KEYS = {
    "trust_checkpoint": False, "torch_compile": False, "lr_past_horizon": "hold", "train_order": "seeded",
    "backbone": "vilt", "dcp_dynamic_prompts": "official", "dcp_masked_prompt_attention": False, "clip_width": 768,
    "clip_layers": 12, "clip_patch_size": 16, "clip_image_size": 224, "clip_text_width": 512, "clip_text_layers": 12,
    "clip_context_length": 77, "clip_vocab_size": 49408, "clip_embed_dim": 512,
}  # fmt: skip


# ---------------------------------------------------------------- checks


def _int(c: dict, key: str, low: int) -> int:
    value = c[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        fail(key, value, f"an integer >= {low}")
    return value


def _flag(c: dict, key: str) -> bool:
    if not isinstance(c[key], bool):
        fail(key, c[key], "True or False")
    return c[key]


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _ratio(key: str, value: object) -> float:
    if not _number(value) or not 0 <= value <= 1:
        fail(key, value, "a number in [0, 1]")
    return float(value)


def _choice(c: dict, key: str, allowed: tuple) -> str:
    if c[key] not in allowed:
        fail(key, c[key], f"one of {allowed}")
    return c[key]


def _layers(c: dict, key: str, n: int, depth_key: str) -> tuple[int, ...]:
    layers = c[key]
    if not isinstance(layers, (list, tuple)) or not all(isinstance(i, int) and 0 <= i < n for i in layers):
        fail(key, layers, f"a list of layer numbers in [0, {n}) ({depth_key}={n})")
    if len(set(layers)) != len(layers):
        fail(key, layers, "unique layer numbers")
    return tuple(layers)


def _utf8(text: str) -> bool:
    """Whether `text` is valid UTF-8 (bytes that are not arrive from the command line as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pair(key: str, value: object, other: str, other_value: object, why: str) -> None:
    raise ConfigError(f"config {key}={value!r} does not go with {other}={other_value!r}: {why}")


def model_config(c: dict) -> ModelConfig:
    tasks = tuple(t for t in TASKS if isinstance(c["loss_names"], dict) and c["loss_names"].get(t, 0) > 0)
    if not tasks:
        fail("loss_names", c["loss_names"], f"one of {tuple(TASKS)} above 0 (use a task_finetune_* config)")
    for task in tasks:
        _int(c, TASKS[task].class_num_key, 2 if task != "mmimdb" else 1)
    backbone, method = _choice(c, "backbone", tuple(BACKBONES)), _choice(c, "prompt_method", tuple(PROMPT_METHODS))
    for key in ("hidden_size", "num_heads", "num_layers", "image_size", "patch_size", "max_text_len", "vocab_size",
                "gen_prompt_length", "shared_prompt_length", "mem_size", "top_k", "prompt_length",
                "clip_layers", "clip_patch_size", "clip_image_size", "clip_text_layers", "clip_context_length",
                "clip_vocab_size", "clip_embed_dim"):  # fmt: skip
        _int(c, key, 1)
    for key in ("clip_width", "clip_text_width"):
        if _int(c, key, 64) % 64:
            fail(key, c[key], "a multiple of 64 (CLIP's heads are width // 64)")
    if c["hidden_size"] % c["num_heads"]:
        fail("hidden_size", c["hidden_size"], f"a multiple of num_heads={c['num_heads']}")
    if not isinstance(c["max_image_len"], int) or isinstance(c["max_image_len"], bool) or c["max_image_len"] < -1:
        fail("max_image_len", c["max_image_len"], "-1 (no cap) or a positive integer")
    for key in ("masked_query", "fp32_similarity", "trim_text", "learnt_p", "multi_layer_prompt",
                "dcp_masked_prompt_attention"):  # fmt: skip
        _flag(c, key)
    _choice(c, "patch_order", ("random", "fixed"))
    _choice(c, "dcp_dynamic_prompts", ("official", "saved"))
    if not _number(c["drop_rate"]) or not 0 <= c["drop_rate"] < 1:
        fail("drop_rate", c["drop_rate"], "a number in [0, 1)")
    if not _number(c["mlp_ratio"]) or c["mlp_ratio"] <= 0:
        fail("mlp_ratio", c["mlp_ratio"], "a number > 0")
    if not isinstance(c["tokenizer"], str) or not c["tokenizer"]:
        fail("tokenizer", c["tokenizer"], "'bert-base-uncased' or a local tokenizer folder")
    if c["trim_text"] and not c["masked_query"]:
        fail("trim_text", True, "masked_query=True as well: the official memory query max-pools over [PAD] tokens, "
                                "so cutting them would change the results")  # fmt: skip
    depth = c["num_layers"] if backbone == "vilt" else min(c["clip_layers"], c["clip_text_layers"])
    depth_key = "num_layers" if backbone == "vilt" else "clip_layers / clip_text_layers"
    values = {f.name: c[f.name] for f in fields(ModelConfig) if f.name != "tasks"}
    for key in ("gen_prompt_layers", "shared_prompt_layers", "prompt_layers"):  # the method's are checked
        used = key.startswith(("gen", "shared")) if method == "mdpl" else key == "prompt_layers" and method != "none"
        values[key] = _layers(c, key, depth, depth_key) if used else tuple(c[key])
    if method == "mdpl" and c["prompt_type"] != "input":  # official MDPL would pool a prompt token, not the [CLS]
        fail("prompt_type", c["prompt_type"], '"input" with prompt_method="mdpl" ("attention" is MAP only)')
    if method == "map":
        _choice(c, "prompt_type", ("input", "attention"))
        if not values["prompt_layers"]:
            fail("prompt_layers", c["prompt_layers"], "at least one layer for prompt_method='map'")
        if c["prompt_type"] == "attention" and c["learnt_p"] and c["prompt_length"] % 2:
            why = 'an even length with prompt_type="attention" (keys take the first half, values the second)'
            fail("prompt_length", c["prompt_length"], why)
    if method == "dcp":
        if backbone != "clip":
            _pair("prompt_method", method, "backbone", backbone, "DCP prompts CLIP's two towers: set backbone=clip")
        if c["prompt_length"] % 3:
            fail("prompt_length", c["prompt_length"], "a multiple of 3 for DCP (correlated, common, dynamic)")
        if values["prompt_layers"] != tuple(range(len(values["prompt_layers"]))) or not values["prompt_layers"]:
            fail("prompt_layers", c["prompt_layers"], "[0, 1, ..., depth - 1] for DCP (its prompt_depth)")
    else:
        for key, default in (("dcp_dynamic_prompts", "official"), ("dcp_masked_prompt_attention", False)):
            if c[key] != default:
                _pair(key, c[key], "prompt_method", method, "it is a DCP key (prompt_method='dcp')")
    if backbone == "clip" and c["trim_text"]:
        _pair("trim_text", True, "backbone", backbone, "a ViLT key (CLIP's text is cut at end-of-text by pruning)")
    return ModelConfig(tasks=tasks, **values)


def data_config(c: dict, model: ModelConfig) -> DataConfig:
    if not isinstance(c["datasets"], (list, tuple)) or not c["datasets"]:
        fail("datasets", c["datasets"], f"a list of {sorted(BY_DATASET)}")
    for dataset in c["datasets"]:
        if dataset not in BY_DATASET:
            fail("datasets", c["datasets"], f"entries among {sorted(BY_DATASET)} (use a task_finetune_* config)")
    data_tasks = tuple(task_of_dataset(d).name for d in c["datasets"])
    if sorted(set(data_tasks)) != sorted(model.tasks):
        fail("datasets", c["datasets"], f"the datasets of the tasks in loss_names ({list(model.tasks)})")
    for table, check in (("missing_ratio", "ratio"), ("missing_type", "type")):
        if not isinstance(c[table], dict) or set(c[table]) != set(SPLITS):
            fail(table, c[table], f"a dict with keys {SPLITS}")
        for split in SPLITS:  # an override names the key the user typed
            typed = f"test_{check}" if split != "train" and c[f"test_{check}"] is not None else f"{table}.{split}"
            if check == "ratio":
                _ratio(typed, c[table][split])
            elif c[table][split] not in MISSING_TYPES:
                fail(typed, c[table][split], f"one of {MISSING_TYPES}")
    _ratio("both_ratio", c["both_ratio"])
    _choice(c, "table_draw", ("official", "seeded"))
    _choice(c, "train_order", ("official", "seeded"))
    _flag(c, "simulate_missing")
    _flag(c, "mmimdb_one_plot")
    keys = ("pixelbert", "pixelbert_randaug")
    for key in ("train_transform_keys", "val_transform_keys"):
        if not isinstance(c[key], (list, tuple)) or not c[key] or any(k not in keys for k in c[key]):
            fail(key, c[key], f"a non-empty list of {keys}")
    if (
        not isinstance(c["per_gpu_batchsize"], int)
        or isinstance(c["per_gpu_batchsize"], bool)
        or (c["per_gpu_batchsize"] < 1)
    ):
        fail("per_gpu_batchsize", c["per_gpu_batchsize"], "an integer >= 1 (it has no default: set it, e.g. 32)")
    _int(c, "num_workers", 0)
    clip = model.backbone == "clip"
    return DataConfig(
        datasets=tuple(c["datasets"]), data_root=c["data_root"], missing_ratio=dict(c["missing_ratio"]),
        missing_type=dict(c["missing_type"]), both_ratio=float(c["both_ratio"]),
        missing_table_root=c["missing_table_root"], table_draw=c["table_draw"],
        simulate_missing=c["simulate_missing"], mmimdb_one_plot=c["mmimdb_one_plot"],
        train_transform_keys=("clip",) if clip else tuple(c["train_transform_keys"]),
        val_transform_keys=("clip",) if clip else tuple(c["val_transform_keys"]),
        image_size=model.input_size, tokenizer=model.text_tokenizer, max_text_len=model.text_length,
        class_nums={t: model.num_classes(t) for t in model.tasks}, per_gpu_batchsize=c["per_gpu_batchsize"],
        num_workers=c["num_workers"], seed=c["seed"], train_order=c["train_order"],
    )  # fmt: skip


def optim_config(c: dict) -> OptimConfig:
    _choice(c, "optim_type", ("adamw", "adam", "sgd"))
    for key in ("learning_rate", "weight_decay", "end_lr", "lr_mult"):
        if not _number(c[key]) or c[key] < 0:
            fail(key, c[key], "a number >= 0")
    if c["decay_power"] != "cosine" and not _number(c["decay_power"]):
        fail("decay_power", c["decay_power"], 'a number (polynomial decay) or "cosine"')
    if c["max_steps"] is not None:
        _int(c, "max_steps", 1)
    _int(c, "max_epoch", 1)
    w = c["warmup_steps"]
    if not _number(w) or w < 0 or (isinstance(w, float) and w > 1):
        fail("warmup_steps", w, "a step count (int >= 0) or a fraction of max_steps (float in [0, 1])")
    _int(c, "batch_size", 1)
    _choice(c, "lr_past_horizon", ("official", "hold"))
    return OptimConfig(**{f.name: c[f.name] for f in fields(OptimConfig)})


def run_config(c: dict) -> RunConfig:
    for key, low in (("num_nodes", 1), ("num_gpus", 0), ("cpu_processes", 1), ("seed", 0)):
        _int(c, key, low)
    n = c["num_gpus"] if c["num_gpus"] > 0 else c["cpu_processes"]
    per_step = c["per_gpu_batchsize"] * n * c["num_nodes"]
    if c["batch_size"] % per_step:
        raise ConfigError(
            f"config batch_size={c['batch_size']} is not a multiple of per_gpu_batchsize x devices x num_nodes = "
            f"{c['per_gpu_batchsize']} x {n} x {c['num_nodes']} = {per_step} (gradients are accumulated over "
            "batch_size // that many batches)"
        )
    if str(c["precision"]) not in PRECISIONS:
        fail("precision", c["precision"], "16, 'bf16', 32 or 64")
    v = c["val_check_interval"]
    if not _number(v) or v <= 0 or (isinstance(v, float) and v > 1):
        fail("val_check_interval", v, "a fraction of an epoch in (0, 1] or a number of batches >= 1")
    if c["test_only"] and not c["load_path"]:
        raise ConfigError("config test_only=True needs load_path=<fine-tuned checkpoint>")
    for key in ("exp_name", "log_dir", "records_root"):
        if not isinstance(c[key], str) or not c[key] or not _utf8(c[key]):
            fail(key, c[key], "a non-empty string of valid UTF-8 text")
    if "/" in c["exp_name"]:
        fail("exp_name", c["exp_name"], "a name without '/' (it names the run's folder)")
    name = c["test_exp_name"]
    if name is not None and (not isinstance(name, str) or not name or "/" in name or not _utf8(name)):
        fail("test_exp_name", name, "None or a non-empty name without '/', of valid UTF-8 text")
    return RunConfig(
        exp_name=c["exp_name"], seed=c["seed"], log_dir=c["log_dir"], load_path=c["load_path"] or "",
        vit_weights=c["vit_weights"] or "", resume_from=c["resume_from"] or None, test_only=bool(c["test_only"]),
        finetune_first=bool(c["finetune_first"]), test_exp_name=c["test_exp_name"], records_root=c["records_root"],
        num_gpus=c["num_gpus"], num_nodes=c["num_nodes"], cpu_processes=c["cpu_processes"],
        precision=PRECISIONS[str(c["precision"])], val_check_interval=v, fast_dev_run=c["fast_dev_run"],
        trust_checkpoint=_flag(c, "trust_checkpoint"), torch_compile=_flag(c, "torch_compile"),
    )  # fmt: skip


def check_sweep(config: dict) -> tuple[list[str], list[str], list[float]]:
    """(sweep_paths or [load_path], sweep_types, sweep_ratios), checked."""
    paths = config["sweep_paths"] or ([config["load_path"]] if config["load_path"] else [])
    if not isinstance(paths, (list, tuple)) or not paths:
        fail("sweep_paths", config["sweep_paths"], "a non-empty list of checkpoints (or set load_path)")
    types, ratios = config["sweep_types"], config["sweep_ratios"]
    if not isinstance(types, (list, tuple)) or not types or any(t not in MISSING_TYPES for t in types):
        fail("sweep_types", types, f"a non-empty list of {MISSING_TYPES}")
    if not isinstance(ratios, (list, tuple)) or not ratios:
        fail("sweep_ratios", ratios, "a non-empty list of numbers in [0, 1]")
    return list(paths), list(types), [_ratio("sweep_ratios", r) for r in ratios]


def check_files(settings: Settings) -> None:
    """Input files exist (nothing is read): data_root, every Arrow file, load_path, vit_weights, resume_from."""
    root = settings.data.data_root
    if not root or not os.path.isdir(root):
        raise MissingFileError(
            f"config data_root={root!r}: no such folder (the folder holding the Arrow files written by make_arrow.py)"
        )
    for name in settings.data.datasets:
        task = task_of_dataset(name)
        for split in SPLITS:
            path = arrow_path(settings.data, split, name)
            if not path.is_file():
                raise MissingFileError(
                    f"Arrow file {str(path)!r} not found; create it with: python make_arrow.py --dataset "
                    f"{task.writer} --root <folder holding {WRITERS[task.writer].raw_subdir}/> --out {root}"
                )
    for key in ("load_path", "vit_weights", "resume_from"):
        value = getattr(settings.run, key)
        if value and key != "resume_from":  # a Hugging Face model id resolves to its cached (or fetched) folder
            value = resolve_weights_path(value, f"config {key}")
        if value and not os.path.exists(value):
            raise MissingFileError(f"config {key}={value!r}: no such file")


def evaluation_config(
    saved: dict, described: tuple[str, str], config: dict, command_line: set[str], source: str
) -> tuple[dict, list[str]]:
    """`config` with the model keys of the checkpoint it evaluates, and notes to print.

    Model keys come from the checkpoint's saved config (`saved`); the backbone and prompt method, where it does not
    record them (official and DCP checkpoints), from its weights (`described` = (backbone, prompt method), see
    mdpl.model.weights). A model key given on the command line (`command_line`) that disagrees with the checkpoint
    is an error, except INFERENCE_OPTIONS, which override the checkpoint's value with a note. Data, device and
    evaluation keys stay as in `config`. The task is checked first: a checkpoint of another task is named so."""
    saved = dict(saved)
    backbone, method = described
    saved.setdefault("backbone", backbone)
    saved.setdefault("prompt_method", method)
    if "prompt_depth" in saved and method == "dcp":  # DCP's own key
        saved.setdefault("prompt_layers", list(range(saved["prompt_depth"])))
    trained = sorted(t for t in TASKS if isinstance(saved.get("loss_names"), dict) and saved["loss_names"].get(t, 0))
    tasks = sorted(t for t in TASKS if config["loss_names"].get(t, 0) > 0)
    if trained and tasks != trained:
        raise ConfigError(f"{source} was trained for task(s) {trained} but the config's loss_names / datasets are "
                          f"for {tasks}: use the task_finetune_* config of {trained[0]}")  # fmt: skip
    merged = {**config, **{k: copy.deepcopy(saved[k]) for k in MODEL_KEYS if k in saved}}
    notes = []
    for key in sorted(command_line & set(MODEL_KEYS) - {"loss_names"}):
        if key not in saved or config[key] == saved[key]:
            continue
        if key in INFERENCE_OPTIONS:
            merged[key] = config[key]
            notes.append(f"{source}: {key}={config[key]!r} from the command line (trained with {saved[key]!r})")
            continue
        raise ConfigError(
            f"config {key}={config[key]!r} disagrees with {source}, trained with {key}={saved[key]!r}; "
            f"model keys come from the checkpoint: drop {key} from the command line"
        )
    return merged, notes
