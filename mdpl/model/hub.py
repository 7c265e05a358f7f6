"""Weights by Hugging Face model id: `load_path=dandelin/vilt-b32-mlm` (or a CLIP id) resolves to the cached
snapshot folder, downloaded into the cache when it is not there and HF_HUB_OFFLINE is unset."""

from __future__ import annotations

import os
import re

import huggingface_hub

from mdpl.errors import MissingFileError

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
    """`value` itself, unless it is a Hugging Face model id (`is_hub_id`): then the cached snapshot folder holding
    its weights (model.safetensors or pytorch_model.bin), downloaded into the cache first when it is not there and
    HF_HUB_OFFLINE is unset. Offline and not cached: an error naming the id, the cache and how to fix it."""
    if not is_hub_id(value):
        return value
    cache = hf_cache_dir()
    for name in HF_WEIGHT_FILES:
        cached = huggingface_hub.try_to_load_from_cache(value, name, cache_dir=cache)
        if isinstance(cached, str) and os.path.isfile(cached):
            return os.path.dirname(cached)
    fix = (
        f"download it once with network access (`hf download {value} model.safetensors`, or run without "
        "HF_HUB_OFFLINE=1; set HF_HUB_CACHE or HF_HOME if the cache is elsewhere), or pass a local path: a "
        "checkpoint file or a folder holding model.safetensors or pytorch_model.bin"
    )
    where = f"{what}={value!r} is neither a local file or folder nor a Hugging Face model in the cache at {cache!r}"
    if hub_offline():
        raise MissingFileError(f"{where} (HF_HUB_OFFLINE is set: nothing is downloaded); {fix}")
    errors = []
    for name in HF_WEIGHT_FILES:
        try:
            return os.path.dirname(huggingface_hub.hf_hub_download(value, name, cache_dir=cache))
        except Exception as e:  # missing file, unknown or gated repository, no network: try the next, then fail
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise MissingFileError(f"{where}, and downloading it failed ({'; '.join(errors)}); {fix}")
