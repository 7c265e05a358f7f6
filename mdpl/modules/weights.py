"""Checkpoint reading and loading: official ViLT pre-training checkpoints, ViLT weights in the Hugging Face
transformers layout, timm ViT state dicts, and fine-tuned checkpoints (official MDPL or ours).

Every `torch.load` here passes weights_only=True: a checkpoint can hold tensors and plain containers (and
the two container types official checkpoints pickle), never code. `trust_checkpoint=True` opts out.
`load_pretrained` decides which converter a file needs; the model never reads files itself.
"""

from __future__ import annotations

import logging
import os
import pickle
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("text_embeddings.", "token_type_embeddings.", "transformer.")
# parameters other prompt methods own: a fine-tuned checkpoint holding them belongs to another run
FOREIGN_HINTS = {
    "complete_prompt": "MAP",
    "missing_text_prompt": "MAP",
    "missing_img_prompt": "MAP",
    "gen_t_prompt_memory": "MDPL",
    "gen_v_prompt_memory": "MDPL",
    "shared_missing_t": "MDPL",
    "shared_missing_v": "MDPL",
    "bottleneck_texts": "MDPL",
    "bottleneck_images": "MDPL",
}


def _safe_types() -> list:
    """Container types that official checkpoints pickle in their hyper-parameters (sacred's read-only
    config, Lightning's AttributeDict): data only, allowed by name."""
    from pytorch_lightning.utilities.parsing import AttributeDict
    from sacred.config.custom_containers import ReadOnlyDict, ReadOnlyList

    return [ReadOnlyDict, ReadOnlyList, AttributeDict]


def prompt_method_of(sd: dict[str, Tensor]) -> str:
    """The prompt_method a fine-tuned state dict was trained with, told by its parameter names
    (official checkpoints do not record it)."""
    found = {FOREIGN_HINTS[k.split(".")[0]].lower() for k in sd if k.split(".")[0] in FOREIGN_HINTS}
    if len(found) > 1:
        raise ValueError(f"checkpoint holds both MAP and MDPL prompt parameters: {sorted(found)}")
    return found.pop() if found else "none"


def load_checkpoint(path: str, what: str = "load_path", trust: bool = False) -> object:
    """torch.load on the CPU with weights_only=True (unless `trust`); errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}={path!r}: no such file")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_safe_types()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a class or function to import: code, not data
            raise ValueError(
                f"{what}={path!r}: refused: unpickling it would run code or build objects other than "
                f"tensors and plain containers ({str(e).splitlines()[0]}). Pass trust_checkpoint=True "
                "only for a file you trust."
            ) from None
        raise ValueError(f"{what}={path!r}: not a readable checkpoint ({e})") from None
    except Exception as e:  # zip, EOF and pickle errors come in many types
        raise ValueError(
            f"{what}={path!r}: not a readable checkpoint ({type(e).__name__}: {e}); expected a "
            "Lightning or official .ckpt, a state dict .pt/.bin, or a .safetensors file"
        ) from e


HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a Hugging Face model folder holds, preferred first
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def is_hub_id(value: object) -> bool:
    """A Hugging Face model id (`owner/name`, e.g. dandelin/vilt-b32-mlm) that is not an existing local path;
    a missing local file with a checkpoint suffix (runs/best.ckpt) is not one."""
    return (
        isinstance(value, str)
        and bool(_HUB_ID.match(value))
        and not value.endswith(_WEIGHT_SUFFIXES)
        and not os.path.exists(value)
    )


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment now: HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub (XDG_CACHE_HOME honoured)."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return os.path.expanduser(cache)
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to 1/true/yes/on, read from the environment now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_weights_path(value: str, what: str = "load_path") -> str:
    """`value` itself, unless it is a Hugging Face model id (`is_hub_id`): then the cached snapshot folder
    holding its weights (model.safetensors or pytorch_model.bin), downloaded into the cache first when it is
    not there and HF_HUB_OFFLINE is unset. Offline and not cached: a FileNotFoundError naming the id, the
    cache and how to fix it. The folder then loads like any Hugging Face model folder (convert_hf_vilt)."""
    if not is_hub_id(value):
        return value
    import huggingface_hub

    cache = hf_cache_dir()
    for name in HF_WEIGHT_FILES:
        cached = huggingface_hub.try_to_load_from_cache(value, name, cache_dir=cache)
        if isinstance(cached, str) and os.path.isfile(cached):
            return os.path.dirname(cached)
    fix = (
        f"download it once with network access (`hf download {value} model.safetensors`, or run without "
        "HF_HUB_OFFLINE=1; set HF_HUB_CACHE or HF_HOME if the cache is elsewhere), or pass a local path: an "
        "official ViLT .ckpt or a folder holding model.safetensors or pytorch_model.bin"
    )
    if hub_offline():
        raise FileNotFoundError(
            f"{what}={value!r} is neither a local file or folder nor a Hugging Face model in the "
            f"cache at {cache!r} (HF_HUB_OFFLINE is set: nothing is downloaded); {fix}"
        )
    errors = []
    for name in HF_WEIGHT_FILES:
        try:
            return os.path.dirname(huggingface_hub.hf_hub_download(value, name, cache_dir=cache))
        except Exception as e:  # missing file, unknown or gated repository, no network: try the next, then fail
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise FileNotFoundError(
        f"{what}={value!r} is neither a local file or folder nor a Hugging Face model in the "
        f"cache at {cache!r}, and downloading it failed ({'; '.join(errors)}); {fix}"
    )


def read_checkpoint(path: str, what: str = "load_path", trust: bool = False) -> tuple[dict[str, Tensor], dict]:
    """(state dict, saved sacred config or {}) of a Lightning/official checkpoint ({"state_dict": ...}), a plain
    state dict (.pt/.bin), a .safetensors file, a Hugging Face model folder (model.safetensors or
    pytorch_model.bin), or a Hugging Face model id such as dandelin/vilt-b32-mlm (`resolve_weights_path`)."""
    path = resolve_weights_path(path, what)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}={path!r}: no such file or folder")
    if os.path.isdir(path):
        for name in HF_WEIGHT_FILES:
            if os.path.exists(os.path.join(path, name)):
                return read_checkpoint(os.path.join(path, name), what, trust)
        raise FileNotFoundError(f"{what}={path!r}: folder has neither model.safetensors nor pytorch_model.bin")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path), {}
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{what}={path!r}: not a readable .safetensors file ({e})") from e
    obj = load_checkpoint(path, what, trust)
    config = {}
    if isinstance(obj, dict):
        hparams = obj.get("hyper_parameters") or {}
        config = dict(hparams.get("config") or {}) if isinstance(hparams, dict) else {}
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{what}={path!r}: expected a state dict of tensors (or a checkpoint with 'state_dict')")
    return obj, config


def read_state_dict(path: str, what: str = "load_path", trust: bool = False) -> dict[str, Tensor]:
    return read_checkpoint(path, what, trust)[0]


def load_pretrained(
    model: nn.Module, path: str, max_text_len: int, what: str = "load_path", trust: bool = False
) -> None:
    """Pre-trained ViLT weights into `model`: an official ViLT checkpoint or a Hugging Face ViLT state dict
    (converted), the text positions resized to max_text_len. A fine-tuned checkpoint given here (it holds
    prompts or task heads) loads its backbone and pooler only, with a warning naming what else it holds."""
    sd = read_state_dict(path, what, trust)
    if is_hf_vilt(sd):
        sd = convert_hf_vilt(sd)
    extra = sorted(
        {
            k.split(".")[0]
            for k in sd
            if k.split(".")[0] in FOREIGN_HINTS or k.endswith("_classifier") or k.split(".")[0].endswith("_classifier")
        }
    )
    if extra:
        log.warning(
            "%s=%r is a fine-tuned checkpoint (it holds %s): only its backbone and pooler are loaded as "
            "pre-trained weights; to evaluate it use test_only=True",
            what,
            path,
            extra,
        )
        sd = {k: v for k, v in sd.items() if k.startswith(BACKBONE_PREFIXES + ("pooler.",))}
    sd = interpolate_text_positions(sd, max_text_len)
    load_backbone(model, sd, f"{what}={path!r}", BACKBONE_PREFIXES)


def load_vit(model: nn.Module, path: str, trust: bool = False) -> None:
    """A timm ViT state dict into model.transformer (text embeddings stay as initialised)."""
    sd = timm_vit_to_vilt(read_state_dict(path, "vit_weights", trust))
    load_backbone(model, sd, f"vit_weights={path!r}", ("transformer.",))


def is_hf_vilt(sd: dict[str, Tensor]) -> bool:
    return any(k.startswith(("vilt.embeddings.", "embeddings.patch_embeddings.")) for k in sd)


_HF_RULES = [  # (pattern on the key without "vilt.", replacement)
    (r"^embeddings\.text_embeddings\.", "text_embeddings."),
    (r"^embeddings\.cls_token$", "transformer.cls_token"),
    (r"^embeddings\.position_embeddings$", "transformer.pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "transformer.patch_embed.proj."),
    (r"^embeddings\.token_type_embeddings\.", "token_type_embeddings."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"transformer.blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"transformer.blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"transformer.blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"transformer.blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"transformer.blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "transformer.norm."),
    (r"^pooler\.dense\.", "pooler.dense."),
]
_HF_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def convert_hf_vilt(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ViltModel / ViltFor* state dict -> official ViLT names; q, k, v joined into qkv.
    Keys without a rule (heads such as mlm_score.*) pass through unchanged, to be reported as unexpected."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in sd.items():
        k = key[len("vilt.") :] if key.startswith("vilt.") else key
        m = _HF_QKV.match(k)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _HF_RULES:
            if re.match(pattern, k):
                out[re.sub(pattern, repl, k)] = value
                break
        else:
            out[key] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"HF ViLT layer {layer} {kind}: found only {sorted(parts)} of query/key/value")
        out[f"transformer.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def interpolate_text_positions(sd: dict[str, Tensor], length: int) -> dict[str, Tensor]:
    """Resize the text position table to `length` as official: the (S, D) table viewed as (1, 1, S, D),
    bilinear (align_corners=False) to (length, D), i.e. linear in position; position_ids = arange(length)."""
    key = "text_embeddings.position_embeddings.weight"
    if key not in sd or sd[key].shape[0] == length:
        return sd
    table = sd[key]
    sd = dict(sd)
    sd[key] = F.interpolate(
        table[None, None].float(), size=(length, table.shape[1]), mode="bilinear", align_corners=False
    )[0, 0].to(table.dtype)
    sd["text_embeddings.position_ids"] = torch.arange(length)[None]
    return sd


def _check_shapes(model: nn.Module, sd: dict[str, Tensor], source: str) -> None:
    own = model.state_dict()
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and own[k].shape != v.shape
    ]
    if bad:
        raise ValueError(f"{source}: shape mismatch (wrong config for these weights?):\n  " + "\n  ".join(bad))


def load_backbone(model: nn.Module, sd: dict[str, Tensor], source: str, required: tuple[str, ...]) -> None:
    """Load pre-trained weights non-strictly (heads and prompts stay as initialised). Every model key
    under `required` prefixes must be present: missing backbone weights are an error, never a silent
    random init. Unexpected keys (the checkpoint's own heads) are logged and ignored."""
    _check_shapes(model, sd, source)
    own = model.state_dict()
    fill = {"text_embeddings.position_ids"}  # a buffer newer checkpoints do not store
    missing_required = [k for k in own if k.startswith(required) and k not in sd and k not in fill]
    if missing_required:
        raise KeyError(
            f"{source}: missing backbone weights {missing_required[:8]}"
            f"{' ...' if len(missing_required) > 8 else ''} ({len(missing_required)} in all)"
        )
    result = model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    unexpected = sorted(k for k in sd if k not in own)
    log.info(
        "%s: loaded %d tensors; kept initialised: %d (%s...); ignored: %d (%s...)",
        source,
        len(sd) - len(unexpected),
        len(result.missing_keys),
        result.missing_keys[:4],
        len(unexpected),
        unexpected[:4],
    )


def load_finetuned(model: nn.Module, sd: dict[str, Tensor], source: str) -> None:
    """Load a fine-tuned checkpoint fully (no interpolation, as official). A checkpoint of another task or
    prompt method, missing weights or wrong shapes are errors."""
    own = model.state_dict()
    optional = {"text_embeddings.position_ids"}
    unexpected = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in sd and k not in optional)
    problems = []
    heads = sorted({k.split(".")[0] for k in unexpected if k.split(".")[0].endswith("_classifier")})
    if heads:
        ours = sorted({k.split(".")[0] for k in own if k.split(".")[0].endswith("_classifier")})
        problems.append(f"it has head(s) {heads} but this model's task head(s) are {ours} (another task?)")
    methods = sorted({FOREIGN_HINTS[k.split(".")[0]] for k in unexpected if k.split(".")[0] in FOREIGN_HINTS})
    if methods:
        problems.append(f"it holds {methods} prompt parameters this prompt_method does not have")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if problems:
        raise ValueError(f"{source} does not fit this model: " + "; ".join(problems))
    _check_shapes(model, sd, source)
    model.load_state_dict(sd, strict=False)
    log.info("%s: loaded fine-tuned checkpoint (%d tensors)", source, len(sd))


def timm_vit_to_vilt(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm ViT state dict -> transformer.* names; the classification head is dropped."""
    return {f"transformer.{k}": v for k, v in sd.items() if not k.startswith(("head.", "fc_norm.", "pre_logits."))}
