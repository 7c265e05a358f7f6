"""Weights in and out of a PromptedModel: reading checkpoint files safely, converting foreign layouts at the
boundary, and loading pre-trained or fine-tuned weights with errors that name the file and what it holds.

Layouts read (`describe` tells them apart):
- ViLT: the official ViLT / MDPL / MAP names (text_embeddings.*, transformer.blocks.N.*, pooler.*; mdpl's own
  ViLT checkpoints too), a Hugging Face ViltModel / ViltFor* state dict (`convert_hf_vilt`), a timm ViT
  (`vit_weights`, the image side only).
- CLIP: OpenAI's layout (ViT-B-16.pt, a TorchScript archive, or a plain state dict; open_clip's "openai" weights
  share the names) and a Hugging Face CLIPModel (`convert_openai_clip`, `convert_hf_clip`); DCP's fine-tuned
  Lightning checkpoints (model.image_encoder.*, model.text_encoder.*, model.prompt_learner.*; `convert_dcp`);
  mdpl's own CLIP checkpoints (visual.*, text.*).
Every `torch.load` passes weights_only=True: a file may hold tensors and plain containers, never code, unless
`trust_checkpoint=True`. A TorchScript archive is read with torch.jit.load, which builds no Python objects.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
import zipfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_lightning.utilities.parsing import AttributeDict
from sacred.config.custom_containers import ReadOnlyDict, ReadOnlyList
from safetensors.torch import load_file
from torch import Tensor

from mdpl.errors import CheckpointError, MissingFileError
from mdpl.model.hub import HF_WEIGHT_FILES, resolve_weights_path

log = logging.getLogger(__name__)

# top-level names of each prompt method's parameters (on either backbone): a checkpoint holding them is fine-tuned
METHOD_PARAMETERS = {
    "map": ("complete_prompt", "missing_text_prompt", "missing_img_prompt"),
    "mdpl": ("gen_t_prompt_memory", "gen_v_prompt_memory", "shared_missing_t", "shared_missing_v",
             "bottleneck_texts", "bottleneck_images"),
    "dcp": ("visual_prompt_complete", "compound_prompt_projections_text", "attn_prompt_text", "attn_prompt_image",
            "prompts_dynamic_complete_text"),
}  # fmt: skip
BACKBONE_KEYS = {"vilt": ("text_embeddings.", "token_type_embeddings.", "transformer."), "clip": ("visual.", "text.")}


# ---------------------------------------------------------------- reading files


def _safe_types() -> list:
    """Container types that official checkpoints pickle in their hyper-parameters (sacred's read-only config,
    Lightning's AttributeDict): data only, allowed by name."""
    return [ReadOnlyDict, ReadOnlyList, AttributeDict]


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_checkpoint(path: str, what: str = "load_path", trust: bool = False) -> object:
    """The object in a torch file, on the CPU, loaded with weights_only=True (unless `trust`); a TorchScript
    archive gives its state dict. Errors name the file."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{what}={path!r}: no such file")
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the archives remain
                return dict(torch.jit.load(path, map_location="cpu").state_dict())
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_safe_types()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a class or function to import: code, not data
            name = re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", str(e), re.IGNORECASE)
            detail = f" (it names {name.group(1)})" if name else ""
            raise CheckpointError(
                f"{what}={path!r}: refused: unpickling it would run code or build objects other than tensors and "
                f"plain containers{detail}. Pass trust_checkpoint=True only for a file you trust."
            ) from None
        raise CheckpointError(f"{what}={path!r}: not a readable checkpoint (its pickle data is damaged)") from None
    except Exception as e:  # zip, EOF and pickle errors come in many types
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{what}={path!r}: not a readable checkpoint ({type(e).__name__}: {first}); expected a Lightning or "
            "official .ckpt, a state dict .pt/.bin, a TorchScript archive or a .safetensors file"
        ) from None


def read_checkpoint(path: str, what: str = "load_path", trust: bool = False) -> tuple[dict[str, Tensor], dict]:
    """(state dict, saved configuration or {}) of a Lightning or official checkpoint ({"state_dict": ...}), a plain
    state dict, a TorchScript archive, a .safetensors file, a Hugging Face model folder or model id."""
    path = resolve_weights_path(path, what)
    if not os.path.exists(path):
        raise MissingFileError(f"{what}={path!r}: no such file or folder")
    if os.path.isdir(path):
        for name in HF_WEIGHT_FILES:
            if os.path.exists(os.path.join(path, name)):
                return read_checkpoint(os.path.join(path, name), what, trust)
        raise MissingFileError(f"{what}={path!r}: folder has neither model.safetensors nor pytorch_model.bin")
    if path.endswith(".safetensors"):
        try:
            return load_file(path), {}
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{what}={path!r}: not a readable .safetensors file ({e})") from None
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
        raise CheckpointError(f"{what}={path!r}: expected a state dict of tensors (or a checkpoint with 'state_dict')")
    return obj, config


# ---------------------------------------------------------------- layouts and converters


def describe(sd: dict[str, Tensor]) -> tuple[str, str]:
    """(backbone, layout) of a state dict: backbone "vilt" | "clip" | "vit" (a timm ViT) | "unknown"; layout names
    the file format ("official ViLT", "Hugging Face ViLT", "OpenAI CLIP", "Hugging Face CLIP", "DCP", ...)."""
    if any(k.startswith(("vilt.embeddings.", "embeddings.patch_embeddings.")) for k in sd):
        return "vilt", "Hugging Face ViLT"
    if any(k.startswith("text_embeddings.") for k in sd) or "transformer.blocks.0.attn.qkv.weight" in sd:
        return "vilt", "ViLT (official names)"
    if any(k.startswith(("model.image_encoder.", "model.text_encoder.", "model.prompt_learner.")) for k in sd):
        return "clip", "DCP"
    if any(k.startswith(("text_model.", "vision_model.")) for k in sd):
        return "clip", "Hugging Face CLIP"
    if "visual.conv1.weight" in sd or "token_embedding.weight" in sd:
        return "clip", "OpenAI CLIP"
    if "visual.patch_embed.weight" in sd or "text.token_embedding.weight" in sd:
        return "clip", "CLIP (mdpl names)"
    if "patch_embed.proj.weight" in sd and any(k.startswith("blocks.") for k in sd):
        return "vit", "timm ViT"
    return "unknown", f"unrecognised keys ({sorted(sd)[:4]}...)"


def prompt_method_of(sd: dict[str, Tensor], source: str = "checkpoint") -> str:
    """The prompt method a fine-tuned state dict (in file names) was trained with, told by its parameter names."""
    found = {m for m, names in METHOD_PARAMETERS.items() for k in sd if k.split(".")[0].startswith(names)}
    if len(found) > 1:
        raise CheckpointError(f"{source} holds the prompt parameters of several methods: {sorted(found)}")
    return found.pop() if found else "none"


def _rename(sd: dict[str, Tensor], rules: list[tuple[str, str]]) -> dict[str, Tensor]:
    """Each key through the first matching (regex, replacement) rule; keys without a rule pass unchanged."""
    out = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    return out


_HF_VILT = [  # on the key without "vilt."
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


def _join_qkv(sd: dict[str, Tensor], pattern: str, target: str, names: tuple[str, str, str]) -> dict[str, Tensor]:
    """Separate query / key / value weights (keys matching `pattern`, groups: layer, part, kind) joined into the
    fused `target` (formatted with layer and kind), in q, k, v order."""
    out, parts = {}, {}
    for key, value in sd.items():
        m = re.match(pattern, key)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[key] = value
    for (layer, kind), found in parts.items():
        if set(found) != set(names):
            raise CheckpointError(f"layer {layer} {kind}: found only {sorted(found)} of {list(names)}")
        out[target.format(layer=layer, kind=kind)] = torch.cat([found[n] for n in names])
    return out


def convert_hf_vilt(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ViltModel / ViltFor* -> official ViLT names; q, k, v joined into qkv. Keys without a rule
    (heads such as mlm_score.*) pass unchanged, to be reported as unexpected."""
    sd = {k.removeprefix("vilt."): v for k, v in sd.items()}
    pattern = r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$"
    sd = _join_qkv(sd, pattern, "transformer.blocks.{layer}.attn.qkv.{kind}", ("query", "key", "value"))
    return _rename(sd, _HF_VILT)


def timm_vit_to_vilt(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm ViT -> transformer.* names; the classification head is dropped."""
    return {f"transformer.{k}": v for k, v in sd.items() if not k.startswith(("head.", "fc_norm.", "pre_logits."))}


_BLOCK = [  # an OpenAI CLIP block's names -> the shared Block's (after "resblocks." -> "blocks.")
    (r"^(.*)\.attn\.in_proj_weight$", r"\1.attn.qkv.weight"),
    (r"^(.*)\.attn\.in_proj_bias$", r"\1.attn.qkv.bias"),
    (r"^(.*)\.attn\.out_proj\.", r"\1.attn.proj."),
    (r"^(.*)\.ln_1\.", r"\1.norm1."),
    (r"^(.*)\.ln_2\.", r"\1.norm2."),
    (r"^(.*)\.mlp\.c_fc\.", r"\1.mlp.fc1."),
    (r"^(.*)\.mlp\.c_proj\.", r"\1.mlp.fc2."),
]
_OPENAI_UNUSED = ("logit_scale", "input_resolution", "context_length", "vocab_size")


def convert_openai_clip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI CLIP (and open_clip "openai") names -> mdpl's CLIP names: visual.conv1 -> visual.patch_embed,
    transformer.resblocks.N -> text.blocks.N (visual.transformer.resblocks.N -> visual.blocks.N), the text tower's
    embeddings, ln_final and text_projection under text.; logit_scale and the archive's scalars dropped."""
    out = {}
    for key, value in sd.items():
        if key in _OPENAI_UNUSED:
            continue
        if key.startswith("visual."):
            key = key.replace("visual.transformer.resblocks.", "visual.blocks.").replace(
                "visual.conv1.", "visual.patch_embed."
            )
        else:
            key = "text." + key.replace("transformer.resblocks.", "blocks.")
        out[key] = value
    return _rename(out, _BLOCK)


_HF_CLIP = [
    (r"^text_model\.embeddings\.token_embedding\.", "text.token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "text.positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "text.ln_final."),
    (r"^text_model\.encoder\.layers\.(\d+)\.", r"text.blocks.\1."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.patch_embed."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"visual.blocks.\1."),
]
_HF_CLIP_BLOCK = [
    (r"^(.*)\.self_attn\.out_proj\.", r"\1.attn.proj."),
    (r"^(.*)\.layer_norm1\.", r"\1.norm1."),
    (r"^(.*)\.layer_norm2\.", r"\1.norm2."),
    (r"^(.*)\.mlp\.fc1\.", r"\1.mlp.fc1."),
    (r"^(.*)\.mlp\.fc2\.", r"\1.mlp.fc2."),
]


def convert_hf_clip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face CLIPModel -> mdpl's CLIP names: q, k, v joined, the projections transposed back from Linear
    weights; position ids and logit_scale dropped."""
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids") and k != "logit_scale"}
    proj = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text.text_projection"}
    sd = {proj.get(k, k): (v.t().contiguous() if k in proj else v) for k, v in sd.items()}
    sd = _rename(_rename(sd, _HF_CLIP), _HF_CLIP_BLOCK)
    pattern = r"^(.*)\.self_attn\.(q|k|v)_proj\.(weight|bias)$"
    return _join_qkv(sd, pattern, "{layer}.attn.qkv.{kind}", ("q", "k", "v"))


def convert_dcp(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A DCP Lightning checkpoint -> mdpl's file names: the towers through convert_openai_clip, the prompt learner's
    parameters at the top level, each tower's attn_prompt as attn_prompt_{image,text}; heads unchanged."""
    towers, out = {}, {}
    for key, value in sd.items():
        if ".transformer.resblocks.0.attn_prompt." in key:
            tower = "image" if key.startswith("model.image_encoder.") else "text"
            out[f"attn_prompt_{tower}.{key.split('.attn_prompt.')[1]}"] = value
        elif key.startswith("model.prompt_learner."):
            out[key.removeprefix("model.prompt_learner.")] = value
        elif key.startswith("model.image_encoder."):
            towers["visual." + key.removeprefix("model.image_encoder.")] = value
        elif key.startswith("model.text_encoder."):
            towers[key.removeprefix("model.text_encoder.")] = value
        elif key != "model.logit_scale":
            out[key] = value
    return {**convert_openai_clip(towers), **out}


CONVERTERS = {
    "Hugging Face ViLT": convert_hf_vilt,
    "DCP": convert_dcp,
    "Hugging Face CLIP": convert_hf_clip,
    "OpenAI CLIP": convert_openai_clip,
    "timm ViT": timm_vit_to_vilt,
}


def to_file_names(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], str, str]:
    """(state dict in mdpl's file names, backbone, layout) of any layout `describe` knows."""
    backbone, layout = describe(sd)
    return CONVERTERS.get(layout, dict)(sd), backbone, layout


def interpolate_text_positions(sd: dict[str, Tensor], length: int) -> dict[str, Tensor]:
    """Resize ViLT's text position table to `length` as officially: the (S, D) table viewed as (1, 1, S, D),
    bilinear (align_corners=False) to (length, D), i.e. linear in position."""
    key = "text_embeddings.position_embeddings.weight"
    if key not in sd or sd[key].shape[0] == length:
        return sd
    table = sd[key]
    resized = F.interpolate(table[None, None].float(), size=(length, table.shape[1]), mode="bilinear")
    return {**sd, key: resized[0, 0].to(table.dtype)}


# ---------------------------------------------------------------- loading into a model

IGNORED_ON_LOAD = ("text_embeddings.position_ids",)  # a buffer older files carry; positions are computed


def _check_shapes(own: dict[str, Tensor], sd: dict[str, Tensor], source: str) -> None:
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
           if k in own and own[k].shape != v.shape]  # fmt: skip
    if bad:
        raise CheckpointError(f"{source}: shape mismatch (wrong config for these weights?): " + "; ".join(bad[:6]))


def _wrong_backbone(model: nn.Module, backbone: str, layout: str, source: str) -> None:
    wanted = model.cfg.backbone
    if backbone == "unknown":
        raise CheckpointError(f"{source} holds no weights layout mdpl knows ({layout})")
    if backbone != wanted and not (backbone == "vit" and wanted == "vilt"):
        needs = {
            "vilt": "ViLT weights (vilt_200k_mlm_itm.ckpt or a Hugging Face ViLT)",
            "clip": "CLIP weights (OpenAI ViT-B-16.pt, a Hugging Face CLIPModel or a DCP checkpoint)",
        }[wanted]
        raise CheckpointError(f"{source} holds {layout} weights, but config backbone={wanted!r} needs {needs}")


def load_pretrained(model: nn.Module, sd: dict[str, Tensor], source: str) -> None:
    """Pre-trained backbone weights (any layout of the model's backbone) into `model`; ViLT's text positions are
    resized to max_text_len. Every backbone weight must be there (never a silent random init); a fine-tuned
    checkpoint given here loads its backbone alone, with a warning naming what else it holds."""
    sd, backbone, layout = to_file_names(sd)
    _wrong_backbone(model, backbone, layout, source)
    own = model.official_state_dict()
    method = prompt_method_of(sd, source)
    heads = sorted({k.split(".")[0] for k in sd if k.split(".")[0].endswith("_classifier")})
    if method != "none" or heads:
        log.warning("%s is a fine-tuned checkpoint (%s prompts, heads %s): only its backbone is loaded as "
                    "pre-trained weights; to evaluate it use test_only=True", source, method, heads)  # fmt: skip
    required = ("transformer.",) if backbone == "vit" else BACKBONE_KEYS[model.cfg.backbone]
    if model.cfg.backbone == "vilt":
        sd = interpolate_text_positions(sd, model.cfg.max_text_len)
    ignored = sorted(k for k in sd if k not in own and k not in IGNORED_ON_LOAD)  # e.g. pre-training heads
    sd = {k: v for k, v in sd.items() if k.startswith(required + ("pooler.",)) and k in own}  # (ViLT's pooler)
    _check_shapes(own, sd, source)
    missing = [k for k in own if k.startswith(required) and k not in sd]
    if missing:
        more = f" ... ({len(missing)} in all)" if len(missing) > 8 else ""
        raise CheckpointError(f"{source}: missing backbone weights {missing[:8]}{more}")
    model.load_state_dict(model.from_official(sd), strict=False)
    log.info("%s (%s): loaded %d tensors; ignored %d (%s...)", source, layout, len(sd), len(ignored), ignored[:4])


def load_finetuned(model: nn.Module, sd: dict[str, Tensor], source: str) -> None:
    """A fine-tuned checkpoint (official, DCP's or mdpl's) into `model`, every weight: a checkpoint of another task,
    prompt method or backbone, missing weights or wrong shapes are errors naming what the file holds."""
    sd, backbone, layout = to_file_names(sd)
    _wrong_backbone(model, backbone, layout, source)
    sd = {k: v for k, v in sd.items() if k not in IGNORED_ON_LOAD}
    own = model.official_state_dict()
    unexpected = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in sd)
    problems = []
    heads = sorted({k.split(".")[0] for k in unexpected if k.split(".")[0].endswith("_classifier")})
    if heads:
        ours = sorted({k.split(".")[0] for k in own if k.split(".")[0].endswith("_classifier")})
        problems.append(f"it has head(s) {heads} but this model's task head(s) are {ours} (another task?)")
    method = prompt_method_of(sd, source)
    if method != model.cfg.prompt_method:
        problems.append(f"it holds the parameters of prompt_method={method!r}, not {model.cfg.prompt_method!r}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if problems:
        raise CheckpointError(f"{source} does not fit this model: " + "; ".join(problems))
    _check_shapes(own, sd, source)
    model.load_state_dict(model.from_official(sd))
    log.info("%s: loaded fine-tuned checkpoint (%d tensors)", source, len(sd))
