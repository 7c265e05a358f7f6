"""The one typed configuration boundary: the sacred dict becomes frozen dataclasses, checked here and only here.

`Settings.from_config(config)` validates every key (an error names the key, the value and what is allowed)
and applies test_ratio / test_type to the val and test missing settings. `ModelConfig` is what a checkpoint
stores and what evaluation rebuilds a model from. Files are checked separately (`check_files`), so a
checkpoint's config can be read on a machine without its data.
"""

from __future__ import annotations

import copy
import numbers
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mdpl.tasks import BY_DATASET, SPLITS, TASKS, task_of_dataset

MISSING_TYPES = ("text", "image", "both")
PROMPT_METHODS = ("mdpl", "map", "none")
PRECISIONS = {
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "32": "32-true",
    "32-true": "32-true",
}
TRANSFORM_KEYS = ("pixelbert", "pixelbert_randaug")
# model keys that change how a trained model computes, not its parameters: evaluation may set them on the
# command line (a note is printed); every other model key comes from the checkpoint
INFERENCE_OPTIONS = ("patch_order", "masked_query", "fp32_similarity", "trim_text", "max_image_len")


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the key."""


def _fail(key: str, value: object, expected: str) -> None:
    raise ConfigError(f"config {key}={value!r}: expected {expected}")


def _int(config: dict, key: str, low: int) -> int:
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        _fail(key, value, f"an integer >= {low}")
    return value


def _flag(config: dict, key: str) -> bool:
    if not isinstance(config[key], bool):
        _fail(key, config[key], "True or False")
    return config[key]


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _ratio(key: str, value: object) -> float:
    if not _number(value) or not 0 <= value <= 1:
        _fail(key, value, "a number in [0, 1]")
    return float(value)


def _choice(config: dict, key: str, allowed: tuple) -> str:
    if config[key] not in allowed:
        _fail(key, config[key], f"one of {allowed}")
    return config[key]


def _layers(config: dict, key: str) -> tuple[int, ...]:
    layers, n = config[key], config["num_layers"]
    if not isinstance(layers, (list, tuple)) or not all(isinstance(i, int) and 0 <= i < n for i in layers):
        _fail(key, layers, f"a list of layer numbers in [0, {n})")
    if len(set(layers)) != len(layers):
        _fail(key, layers, "unique layer numbers")
    return tuple(layers)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the model or how it computes: stored in checkpoints, rebuilt from them."""

    tasks: tuple[str, ...]
    mmimdb_class_num: int
    food101_class_num: int
    hatememes_class_num: int
    prompt_method: str
    prompt_type: str
    learnt_p: bool
    multi_layer_prompt: bool
    gen_prompt_length: int
    gen_prompt_layers: tuple[int, ...]
    shared_prompt_length: int
    shared_prompt_layers: tuple[int, ...]
    mem_size: int
    top_k: int
    prompt_length: int
    prompt_layers: tuple[int, ...]
    masked_query: bool
    fp32_similarity: bool
    trim_text: bool
    patch_order: str
    hidden_size: int
    num_heads: int
    num_layers: int
    mlp_ratio: float
    drop_rate: float
    image_size: int
    patch_size: int
    max_text_len: int
    max_image_len: int
    vocab_size: int
    tokenizer: str

    def num_classes(self, task: str) -> int:
        return getattr(self, TASKS[task].class_num_key)

    @classmethod
    def from_config(cls, config: dict) -> ModelConfig:
        c = config
        tasks = tuple(t for t in TASKS if c["loss_names"].get(t, 0) > 0)
        if not tasks:
            _fail("loss_names", dict(c["loss_names"]), f"one of {tuple(TASKS)} above 0 (use a task_finetune_* config)")
        for task in tasks:
            _int(c, TASKS[task].class_num_key, 2 if task != "mmimdb" else 1)
        method = _choice(c, "prompt_method", PROMPT_METHODS)
        if method == "mdpl" and c["prompt_type"] != "input":
            # official MDPL would then pool a prompt token instead of the text [CLS]: never what is meant
            _fail("prompt_type", c["prompt_type"], '"input" with prompt_method="mdpl" ("attention" is MAP only)')
        if method == "map":
            _choice(c, "prompt_type", ("input", "attention"))
            if not _layers(c, "prompt_layers"):
                _fail("prompt_layers", c["prompt_layers"], "at least one layer for prompt_method='map'")
            if c["prompt_type"] == "attention" and c["learnt_p"] and c["prompt_length"] % 2:
                _fail(
                    "prompt_length",
                    c["prompt_length"],
                    'an even length with prompt_type="attention" (keys take the first half, values the second)',
                )
        for key in (
            "hidden_size",
            "num_heads",
            "num_layers",
            "image_size",
            "patch_size",
            "max_text_len",
            "vocab_size",
            "gen_prompt_length",
            "shared_prompt_length",
            "mem_size",
            "top_k",
            "prompt_length",
        ):
            _int(c, key, 1)
        if c["hidden_size"] % c["num_heads"]:
            _fail("hidden_size", c["hidden_size"], f"a multiple of num_heads={c['num_heads']}")
        if not isinstance(c["max_image_len"], int) or c["max_image_len"] < -1:
            _fail("max_image_len", c["max_image_len"], "-1 (no cap) or a positive integer")
        if c["trim_text"] and not c["masked_query"]:
            _fail(
                "trim_text",
                True,
                "masked_query=True as well: the official memory query max-pools over [PAD] "
                "tokens, so cutting them would change the results",
            )
        _choice(c, "patch_order", ("random", "fixed"))
        if not _number(c["drop_rate"]) or not 0 <= c["drop_rate"] < 1:
            _fail("drop_rate", c["drop_rate"], "a number in [0, 1)")
        if not isinstance(c["tokenizer"], str) or not c["tokenizer"]:
            _fail("tokenizer", c["tokenizer"], "'bert-base-uncased' or a local tokenizer folder")
        values = {f.name: c[f.name] for f in fields(cls) if f.name != "tasks"}
        used = {"mdpl": ("gen_prompt_layers", "shared_prompt_layers"), "map": ("prompt_layers",)}.get(method, ())
        for key in ("gen_prompt_layers", "shared_prompt_layers", "prompt_layers"):  # only the method's are checked
            values[key] = _layers(c, key) if key in used else tuple(c[key])
        return cls(tasks=tasks, **values)

    def to_config(self) -> dict:
        """The sacred keys this config came from (loss_names for the tasks)."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k != "tasks"}
        out["loss_names"] = {t: int(t in self.tasks) for t in TASKS}
        return out


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[str, ...]
    data_root: str
    missing_ratio: dict  # split -> ratio, after test_ratio
    missing_type: dict  # split -> type, after test_type
    both_ratio: float
    missing_table_root: str
    table_draw: str
    simulate_missing: bool
    mmimdb_one_plot: bool
    train_transform_keys: tuple[str, ...]
    val_transform_keys: tuple[str, ...]
    per_gpu_batchsize: int
    num_workers: int
    seed: int


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
        model = ModelConfig.from_config(c)
        return cls(model, _data(c, model), _optim(c), _run(c), c)

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

    def with_model(self, model: ModelConfig) -> Settings:
        """These settings with another model config (evaluation: the checkpoint's)."""
        c = {**self.config, **model.to_config()}
        return Settings(model, self.data, self.optim, self.run, c)


def resolve(config: dict) -> dict:
    """A plain copy of sacred's read-only config with test_ratio / test_type applied to val and test (never
    train), as officially, so that hparams and records carry the settings actually used."""
    c = copy.deepcopy(plain(config))
    for key in ("trust_checkpoint", "torch_compile"):  # run keys newer than some saved configs
        c.setdefault(key, False)
    for key, table in (("test_ratio", "missing_ratio"), ("test_type", "missing_type")):
        if c[key] is not None:
            c[table] = {**c[table], "val": c[key], "test": c[key]}
    return c


def plain(obj):
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _data(c: dict, model: ModelConfig) -> DataConfig:
    if not isinstance(c["datasets"], (list, tuple)) or not c["datasets"]:
        _fail("datasets", c["datasets"], f"a list of {sorted(BY_DATASET)}")
    data_tasks = tuple(task_of_dataset(d).name for d in c["datasets"])
    if sorted(set(data_tasks)) != sorted(model.tasks):
        _fail("datasets", c["datasets"], f"the datasets of the tasks in loss_names ({list(model.tasks)})")
    for table, allowed in (("missing_ratio", None), ("missing_type", MISSING_TYPES)):
        if not isinstance(c[table], dict) or set(c[table]) != set(SPLITS):
            _fail(table, c[table], f"a dict with keys {SPLITS}")
        for split in SPLITS:
            key, value = f"{table}.{split}", c[table][split]
            if allowed is None:
                _ratio(key, value)
            elif value not in allowed:
                _fail(key, value, f"one of {allowed}")
    if c["test_ratio"] is not None:
        _ratio("test_ratio", c["test_ratio"])
    if c["test_type"] is not None and c["test_type"] not in MISSING_TYPES:
        _fail("test_type", c["test_type"], f"one of {MISSING_TYPES} or None")
    _ratio("both_ratio", c["both_ratio"])
    _choice(c, "table_draw", ("official", "seeded"))
    for key in ("train_transform_keys", "val_transform_keys"):
        keys = c[key]
        if not isinstance(keys, (list, tuple)) or not keys or any(k not in TRANSFORM_KEYS for k in keys):
            _fail(key, keys, f"a non-empty list of {TRANSFORM_KEYS}")
    hint = " (it has no default: set it, e.g. per_gpu_batchsize=32)"
    if not isinstance(c["per_gpu_batchsize"], int) or c["per_gpu_batchsize"] < 1:
        _fail("per_gpu_batchsize", c["per_gpu_batchsize"], "an integer >= 1" + hint)
    _int(c, "num_workers", 0)
    return DataConfig(
        datasets=tuple(c["datasets"]), data_root=c["data_root"], missing_ratio=dict(c["missing_ratio"]),
        missing_type=dict(c["missing_type"]), both_ratio=float(c["both_ratio"]),
        missing_table_root=c["missing_table_root"], table_draw=c["table_draw"],
        simulate_missing=bool(c["simulate_missing"]), mmimdb_one_plot=bool(c["mmimdb_one_plot"]),
        train_transform_keys=tuple(c["train_transform_keys"]), val_transform_keys=tuple(c["val_transform_keys"]),
        per_gpu_batchsize=c["per_gpu_batchsize"], num_workers=c["num_workers"], seed=c["seed"],
    )  # fmt: skip


def _optim(c: dict) -> OptimConfig:
    _choice(c, "optim_type", ("adamw", "adam", "sgd"))
    for key in ("learning_rate", "weight_decay", "end_lr", "lr_mult"):
        if not _number(c[key]) or c[key] < 0:
            _fail(key, c[key], "a number >= 0")
    if c["decay_power"] != "cosine" and not _number(c["decay_power"]):
        _fail("decay_power", c["decay_power"], 'a number (polynomial decay) or "cosine"')
    if c["max_steps"] is not None:
        _int(c, "max_steps", 1)
    _int(c, "max_epoch", 1)
    w = c["warmup_steps"]
    if not _number(w) or w < 0 or (isinstance(w, float) and w > 1):
        _fail("warmup_steps", w, "a step count (int >= 0) or a fraction of max_steps (float in [0, 1])")
    _int(c, "batch_size", 1)
    return OptimConfig(**{f.name: c[f.name] for f in fields(OptimConfig)})


def _run(c: dict) -> RunConfig:
    for key, low in (("num_nodes", 1), ("num_gpus", 0), ("cpu_processes", 1), ("seed", 0)):
        _int(c, key, low)
    n = c["num_gpus"] if c["num_gpus"] > 0 else c["cpu_processes"]
    per_step = c["per_gpu_batchsize"] * n * c["num_nodes"]
    if c["batch_size"] % per_step:
        raise ConfigError(
            f"config batch_size={c['batch_size']} is not a multiple of per_gpu_batchsize x devices x "
            f"num_nodes = {c['per_gpu_batchsize']} x {n} x {c['num_nodes']} = {per_step} "
            "(gradients are accumulated over batch_size // that many batches)"
        )
    if str(c["precision"]) not in PRECISIONS:
        _fail("precision", c["precision"], "16, 'bf16' or 32")
    v = c["val_check_interval"]
    if not _number(v) or v <= 0 or (isinstance(v, float) and v > 1):
        _fail("val_check_interval", v, "a fraction of an epoch in (0, 1] or a number of batches >= 1")
    if c["test_only"] and not c["load_path"]:
        raise ConfigError("config test_only=True needs load_path=<fine-tuned checkpoint>")
    for key in ("exp_name", "log_dir", "records_root"):
        if not isinstance(c[key], str) or not c[key]:
            _fail(key, c[key], "a non-empty string")
    if c["test_exp_name"] is not None and (not isinstance(c["test_exp_name"], str) or "/" in c["test_exp_name"]):
        _fail("test_exp_name", c["test_exp_name"], "None or a name without '/'")
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
        _fail("sweep_paths", config["sweep_paths"], "a non-empty list of checkpoints (or set load_path)")
    types, ratios = config["sweep_types"], config["sweep_ratios"]
    if not isinstance(types, (list, tuple)) or not types or any(t not in MISSING_TYPES for t in types):
        _fail("sweep_types", types, f"a non-empty list of {MISSING_TYPES}")
    if not isinstance(ratios, (list, tuple)) or not ratios:
        _fail("sweep_ratios", ratios, "a non-empty list of numbers in [0, 1]")
    ratios = [_ratio("sweep_ratios", r) for r in ratios]
    return list(paths), list(types), ratios


def check_files(settings: Settings) -> None:
    """Input files exist (nothing is read): data_root, every Arrow file, load_path, vit_weights, resume_from."""
    from mdpl.writers import WRITERS

    root = settings.data.data_root
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(
            f"config data_root={root!r}: no such folder (the folder holding the Arrow files written by make_arrow.py)"
        )
    for name in settings.data.datasets:
        task = task_of_dataset(name)
        for split in SPLITS:
            path = Path(root) / f"{task.arrow_name(split)}.arrow"
            if not path.is_file():
                raw = WRITERS[task.writer].raw_subdir
                raise FileNotFoundError(
                    f"Arrow file {str(path)!r} not found; create it with: python make_arrow.py "
                    f"--dataset {task.writer} --root <folder holding {raw}/> --out {root}"
                )
    for key in ("load_path", "vit_weights", "resume_from"):
        value = getattr(settings.run, key)
        if value and key != "resume_from":  # a Hugging Face model id resolves to its cached (or fetched) folder
            from mdpl.modules.weights import resolve_weights_path  # here: weights imports settings

            value = resolve_weights_path(value, f"config {key}")
        if value and not os.path.exists(value):
            raise FileNotFoundError(f"config {key}={value!r}: no such file")


MODEL_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name != "tasks") + ("loss_names",)


def evaluation_config(
    saved: dict, checkpoint_method: str, config: dict, command_line: set[str], source: str
) -> tuple[dict, list[str]]:
    """`config` with the model keys of the checkpoint it evaluates, and notes to print.

    Model keys come from the checkpoint's saved config (`saved`); official checkpoints store none, so theirs
    come from `config` with the prompt_method told by their parameter names. A model key given on the command
    line (`command_line`) that disagrees with the checkpoint is an error, except INFERENCE_OPTIONS, which
    override the checkpoint's value with a note. Data, device and evaluation keys stay as in `config`.
    """
    if not saved:
        if "prompt_method" in command_line and config["prompt_method"] != checkpoint_method:
            raise ConfigError(
                f"config prompt_method={config['prompt_method']!r} disagrees with {source}, whose "
                f"parameters are those of prompt_method={checkpoint_method!r}"
            )
        return {**config, "prompt_method": checkpoint_method}, []
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
    tasks = sorted(t for t in TASKS if config["loss_names"].get(t, 0) > 0)
    trained = sorted(t for t in TASKS if merged["loss_names"].get(t, 0) > 0)
    if tasks != trained:
        raise ConfigError(
            f"{source} was trained for task(s) {trained} but the config's loss_names / datasets are "
            f"for {tasks} (another task?)"
        )
    return merged, notes
