"""The sacred experiment: every configuration key with its official default, and the named configs.

Keys marked "mdpl:" are ours; each defaults to the official behaviour unless its comment says otherwise.
The official keys that change nothing are listed once, in OFFICIAL_UNUSED: they are kept so that official
command lines and hparams files keep working, and `run.py print_config` says why each does nothing.
mdpl.train.settings checks every value.
"""

import difflib
import logging

from sacred import SETTINGS, Experiment
from sacred.commands import _format_config

from mdpl.errors import ConfigError

# sacred inspects git (and fails in a repository with no commit) unless told not to.
SETTINGS.DISCOVER_SOURCES = "none"
SETTINGS.DISCOVER_DEPENDENCIES = "none"
SETTINGS.CAPTURE_MODE = "no"

ex = Experiment("mdpl", save_git_info=False)


class _DropNoise(logging.Filter):
    """sacred's notes that say nothing here: task configs set max_steps=None over the int default, runs have no
    observers (Lightning logs the run), and its start and end lines (a refusal is one line of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        noise = ("Changed type of config entry", "No observers have been added", "Running command", "Started",
                 "Completed after", "Failed after")  # fmt: skip
        return not message.startswith(noise)


for _name in ("", "mdpl"):  # sacred logs them on the root logger or the experiment's
    logging.getLogger(_name).addFilter(_DropNoise())


def _loss_names(d: dict) -> dict:
    names = dict.fromkeys(["itm", "mlm", "mpp", "mppd", "vqa", "nlvr2", "irtr", "mmimdb", "hatememes", "food101"], 0)
    names.update(d)
    return names


@ex.config
def config():
    exp_name = "src"
    seed = 42
    datasets = ["coco", "vg", "sbu", "gcc"]  # override with a task's named config
    loss_names = _loss_names({"itm": 1, "mlm": 1})  # a task config sets its task to 1 (itm, mlm...: unused)
    batch_size = 4096  # the effective batch: gradients are accumulated up to it

    test_ratio = None  # if set, replaces missing_ratio for val and test
    test_type = None  # if set, replaces missing_type for val and test
    test_exp_name = None  # if set, evaluation appends a records line (see README)

    missing_ratio = {"train": 0.7, "val": 0.7, "test": 0.7}
    missing_type = {"train": "image", "val": "image", "test": "image"}  # text | image | both
    both_ratio = 0.5  # share of the missing samples that lose the image when missing_type is "both"
    missing_table_root = "./datasets/missing_tables/"
    simulate_missing = False
    table_draw = "official"  # mdpl: "official" = global random.sample after seeding; "seeded" = own generator
    mmimdb_one_plot = False  # mdpl: True keeps one plot (the first) per movie instead of one sample per plot

    backbone = "vilt"  # mdpl: "vilt" (frozen ViLT) or "clip" (frozen CLIP, the clip_* keys)
    prompt_method = "mdpl"  # mdpl: "mdpl", "map" (missing-aware prompts), "none" (frozen backbone), "dcp" (CLIP)
    prompt_type = "input"  # "input": classify from the text [CLS]; "attention" (MAP only): prefix keys/values
    learnt_p = True  # MAP: trainable prompts (no effect on MDPL)
    multi_layer_prompt = True  # MAP: one prompt per prompt layer (no effect on MDPL)
    gen_prompt_length = 16
    gen_prompt_layers = [0, 1, 2, 3, 4, 5]
    shared_prompt_length = 16
    shared_prompt_layers = [0, 1, 2, 3, 4, 5]
    mem_size = 16
    top_k = 5
    prompt_length = 16  # mdpl: MAP prompt length; DCP: its prompt_length (3 kinds of prompt_length / 3 tokens)
    prompt_layers = [0, 1, 2, 3, 4, 5]  # mdpl: MAP prompt layers; DCP: [0 .. prompt_depth - 1]
    dcp_dynamic_prompts = "official"  # mdpl: "official": redrawn at each model build, never saved; "saved": kept
    dcp_masked_prompt_attention = False  # mdpl: True: DCP's text prompt attention skips the padding
    masked_query = False  # mdpl: max-pool the memory queries over real tokens only (official: over pads too)
    fp32_similarity = False  # mdpl: memory similarities in fp32 under autocast (official: fp16 top-k)
    trim_text = False  # mdpl: cut each batch's text to its longest; needs masked_query to keep results

    train_transform_keys = ["pixelbert"]
    val_transform_keys = ["pixelbert"]
    image_size = 384
    max_image_len = -1
    patch_size = 32
    patch_order = "random"  # mdpl: "random" (official random permutation) or "fixed" (row-major, reproducible)

    max_text_len = 40
    tokenizer = "bert-base-uncased"  # the bundled vocabulary, or a local Hugging Face tokenizer folder
    vocab_size = 30522

    hidden_size = 768
    num_heads = 12
    num_layers = 12
    mlp_ratio = 4
    drop_rate = 0.1
    vit_weights = ""  # mdpl: timm ViT state dict used when load_path is "" (official: timm's ImageNet download)

    clip_width = 768  # mdpl: CLIP vision tower width (heads: width // 64), ViT-B/16 by default
    clip_layers = 12  # mdpl
    clip_patch_size = 16  # mdpl
    clip_image_size = 224  # mdpl: the resize and centre crop of the "clip" transform
    clip_text_width = 512  # mdpl: CLIP text tower width (heads: width // 64)
    clip_text_layers = 12  # mdpl
    clip_context_length = 77  # mdpl: tokens per text
    clip_vocab_size = 49408  # mdpl
    clip_embed_dim = 512  # mdpl: width of each projected feature

    optim_type = "adamw"  # adamw | adam | sgd
    learning_rate = 1e-4
    weight_decay = 0.01
    decay_power = 1  # a number for polynomial decay, or "cosine"
    max_epoch = 100
    max_steps = 25000  # None: derived from the loader length
    warmup_steps = 2500  # int: steps; float: fraction of max_steps
    end_lr = 0
    lr_mult = 1  # learning-rate multiplier for the heads
    lr_past_horizon = "official"  # mdpl: a step past max_steps: "official" (cosine rises again) or "hold" (stays)

    mmimdb_class_num = 23
    hatememes_class_num = 2
    food101_class_num = 101

    resume_from = None
    fast_dev_run = False
    val_check_interval = 1.0
    test_only = False
    finetune_first = False
    data_root = ""
    log_dir = "result"
    per_gpu_batchsize = 0  # must be set
    num_gpus = 1  # 0 runs on the CPU
    num_nodes = 1
    load_path = ""
    num_workers = 8
    precision = 16  # 16 (fp16 autocast), "bf16", 32 or 64 (mdpl: float64, to check equivalence exactly)
    records_root = "./records"  # mdpl: where test_exp_name records go (official: ./records)

    sweep_paths = []  # mdpl: checkpoints to evaluate; empty means [load_path]
    sweep_types = ["text", "image", "both"]  # mdpl
    sweep_ratios = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # mdpl
    sweep_groups = []  # mdpl: a group name per sweep_paths entry (averaged); empty: by saved config less seed
    protocol_types = ["text", "image", "both"]  # mdpl: `run.py protocol`: the training (and test) missing cases
    compare_methods = ["none", "map", "mdpl", "dcp"]  # mdpl: `run.py compare`: prompt methods to train
    compare_backbones = ["vilt", "clip"]  # mdpl: `run.py compare`: backbones (DCP runs on CLIP only)
    compare_seeds = [0, 1]  # mdpl: `run.py compare`: seeds of each backbone x method
    cpu_processes = 1  # mdpl: with num_gpus=0, CPU processes (DDP over gloo when > 1; tests and debugging)
    train_order = "official"  # mdpl: train batches in DistributedSampler's seed-0 order (any seed); "seeded": seed
    trust_checkpoint = False  # mdpl: True lets torch.load unpickle arbitrary objects (only for files you trust)
    torch_compile = False  # mdpl: torch.compile the transformer blocks and prompt memories (same math)


# Official keys that change nothing (no MLM or ITM objective, no VQA, the backbone always frozen...), with why.
OFFICIAL_UNUSED = {
    "fix_model": (True, "the backbone is always frozen"),
    "bottleneck_dim": (8, "the MDPL bottleneck width is hidden_size // 16"),
    "vit": ("vit_base_patch32_384", "the ViT shape comes from hidden_size, num_layers, num_heads, patch_size"),
    "image_only": (False, "no image-only mode"),
    "draw_false_image": (1, "no image-text matching objective"),
    "draw_false_text": (0, "no image-text matching objective"),
    "vqav2_label_size": (3129, "no VQA task"),
    "get_recall_metric": (False, "no retrieval metrics"),
    "whole_word_masking": (False, "no masked-language objective"),
    "mlm_prob": (0.15, "no masked-language objective"),
}
ex.add_config({key: default for key, (default, _) in OFFICIAL_UNUSED.items()})


@ex.command(unobserved=True)
def print_config(_run):
    """Print every key with its value and what it does (sacred's print_config, with the unused official keys)."""
    mods = _run.config_modifications
    mods.docs.update({key: f"official, unused: {why}" for key, (_, why) in OFFICIAL_UNUSED.items()})
    print(_format_config(_run.config, mods))


def _finetune(exp_name: str, datasets: list, task: str, lr: float, val_check: float, text_len: int) -> dict:
    return dict(
        exp_name=exp_name,
        datasets=datasets,
        loss_names=_loss_names({task: 1}),
        batch_size=256,
        max_epoch=20,
        max_steps=None,
        warmup_steps=0.1,
        draw_false_image=0,
        learning_rate=lr,
        val_check_interval=val_check,
        weight_decay=2e-2,
        max_text_len=text_len,
    )


# The official exp_names (finetune_mmimdb_both, finetune_food101_both111, finetune_hatememes) named missing settings
# these configs do not train with (they train with 70% of the images missing); the run folders name the method.
ex.add_named_config("task_finetune_mmimdb", _finetune("mdpl_finetune_mmimdb", ["mmimdb"], "mmimdb", 5e-3, 0.2, 1024))
ex.add_named_config("task_finetune_food101", _finetune("mdpl_finetune_food101", ["Food101"], "food101", 5e-3, 0.2, 512))
ex.add_named_config(
    "task_finetune_hatememes", _finetune("mdpl_finetune_hatememes", ["Hatefull_Memes"], "hatememes", 1e-3, 0.11, 128)
)


# MAP baseline (docs/official-behaviour.md#map-baseline): the task's settings with MAP's published lr 1e-2,
# seed 0 and missing type "both" for train/val/test. (Plain frozen ViLT: the MDPL task config with prompt_method=none.)
def _map(exp_name: str, datasets: list, task: str, val_check: float, text_len: int) -> dict:
    both = {"train": "both", "val": "both", "test": "both"}
    return dict(
        _finetune(exp_name, datasets, task, 1e-2, val_check, text_len), seed=0, missing_type=both, prompt_method="map"
    )


ex.add_named_config("task_finetune_mmimdb_map", _map("map_finetune_mmimdb", ["mmimdb"], "mmimdb", 0.2, 1024))
ex.add_named_config("task_finetune_food101_map", _map("map_finetune_food101", ["Food101"], "food101", 0.2, 512))
ex.add_named_config(
    "task_finetune_hatememes_map", _map("map_finetune_hatememes", ["Hatefull_Memes"], "hatememes", 0.11, 128)
)


# DCP on CLIP (docs/official-behaviour.md#dcp-on-clip): DCP's official task settings (lr 1e-2, seed 0, missing type
# "both" at 0.7, prompt length 36, depth 6; batch, epochs, warm-up, decay and validation as the other task configs).
def _dcp(exp_name: str, datasets: list, task: str, val_check: float, text_len: int) -> dict:
    return dict(
        _map(exp_name, datasets, task, val_check, text_len),
        backbone="clip",
        prompt_method="dcp",
        prompt_length=36,
        prompt_layers=[0, 1, 2, 3, 4, 5],
    )


ex.add_named_config("task_finetune_mmimdb_dcp", _dcp("dcp_finetune_mmimdb", ["mmimdb"], "mmimdb", 0.2, 1024))
ex.add_named_config("task_finetune_food101_dcp", _dcp("dcp_finetune_food101", ["Food101"], "food101", 0.2, 512))
ex.add_named_config(
    "task_finetune_hatememes_dcp", _dcp("dcp_finetune_hatememes", ["Hatefull_Memes"], "hatememes", 0.11, 128)
)

# A size recipe for CPU runs on synthetic data (`make demo`, tests): `with task_finetune_<task> tiny`. It sets model
# size, image size, prompt sizes, text length, epochs, batch, learning rate and CPU settings, never the task or its
# data, so it composes with any task config; it must come after the task config (run.py checks the order).
# No pretrained weights are available offline, so the frozen backbone is random and only prompts, pooler (CLIP:
# ln_post, proj, ln_final) and head learn. A random backbone passes little per-sample signal to the pooled token
# (its attention is near uniform; what it adds grows with width), so the model is wide and shallow; dropout would
# drown that signal. The clip_* sizes apply with backbone=clip; prompt_length 6 suits MAP and DCP (3 x 2 tokens).
TINY = dict(
    hidden_size=512,
    num_layers=2,
    num_heads=8,
    image_size=64,
    max_text_len=12,
    gen_prompt_layers=[0, 1],
    shared_prompt_layers=[0, 1],
    prompt_layers=[0, 1],
    gen_prompt_length=4,
    shared_prompt_length=4,
    prompt_length=6,
    mem_size=8,
    top_k=2,
    drop_rate=0.0,
    clip_width=256,
    clip_layers=2,
    clip_image_size=64,
    clip_text_width=256,
    clip_text_layers=2,
    clip_context_length=16,
    clip_embed_dim=256,
    num_gpus=0,
    precision=32,
    num_workers=0,
    per_gpu_batchsize=16,
    batch_size=16,
    max_epoch=30,
    max_steps=None,
    warmup_steps=0.1,
    learning_rate=1e-3,
    val_check_interval=1.0,
)
ex.add_named_config("tiny", TINY)
SIZE_RECIPES = ("tiny",)


def check_named_config_order(named: list[str]) -> None:
    """A size recipe overrides some keys a task config also sets (batch, epochs, lr, text length), so it must
    come after every task config; the other order would silently undo it."""
    for i, name in enumerate(named):
        later = [n for n in named[i + 1 :] if n.startswith("task_finetune_")]
        if name in SIZE_RECIPES and later:
            raise ConfigError(
                f"named config {name!r} must come after {later[0]!r} (it overrides that config's batch, epochs, "
                f"learning rate and text length): write `with {later[0]} {name}`"
            )


@ex.command(unobserved=True)
def resolved_config(_config):
    """The configuration as a plain dict (`make_config`)."""
    return _config


def make_config(*named: str, **updates) -> dict:
    """The configuration of `python run.py with <named...> key=value ...` as a plain dict, without running."""
    check_named_config_order(list(named))
    root = logging.getLogger()
    level = root.level  # sacred's --loglevel sets the root logger's level for the whole process
    try:
        run = ex.run(
            "resolved_config", config_updates=updates, named_configs=list(named), options={"--loglevel": "ERROR"}
        )
    finally:
        root.setLevel(level)
    return plain(run.result)


def plain(obj):
    """sacred's read-only containers (and tuples) as plain dicts and lists."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def command_line_keys(run) -> set[str]:
    """The top-level keys a sacred run set explicitly with key=value (named configs excluded); the order of its
    named configs is checked first, and a key that no configuration has (a typo) is an error."""
    check_named_config_order(run.meta_info.get("named_configs") or [])
    typed = set(run.meta_info.get("config_updates") or {})
    known = set(make_config())  # sacred takes any key=value; the defaults hold every key there is
    for key in sorted(typed - known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"config {key}={run.config[key]!r}: no such key{hint}; `python run.py print_config` lists them"
        )
    return typed
