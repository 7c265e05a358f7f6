"""The CLIP references of MDPL, MAP and the prompt-free model, written from the documented behaviour
(docs/official-behaviour.md#model-and-prompt-insertion, #map-baseline, #dcp-on-clip, and README "DCP on CLIP"):
per sample and per tower, float64, explicit attention, in the file names of mdpl's CLIP checkpoints.

- The towers: the text tower (token + position embeddings, causal blocks; feature ln_final(end-of-text row) @
  text_projection) and the vision tower (patches as a matrix product, class token, positions, ln_pre, blocks;
  feature ln_post(class row) @ proj). Blocks: pre-LayerNorm (eps 1e-5), QuickGELU, width // 64 heads.
- MDPL: each tower is one side. Before each prompt layer the layer's shared prompts S (A_t + A_v, A_t or A_v by
  missing code, through the side's bottleneck: text width -> text width / 16 -> GELU -> the tower's width) and its
  generative prompts P (the side's memory read with the max over the tower's real tokens as they enter the layer:
  text positions up to end-of-text, every image token) go in front of the side's prompts by the official rule.
- MAP: each tower its own three prompt tensors (complete_prompt_{tower}, missing_text_prompt_{tower},
  missing_img_prompt_{tower}); "input" puts the layer's prompt in front of the tower's whole sequence, "attention"
  gives the first half as prefix keys and the second as prefix values (the whole prompt for both when learnt_p
  is False), unprojected. "none": no prompts.
- The head: Linear on (image feature, text feature), the missing modality's half zero.
Dropout does not exist in CLIP; the comparison runs in eval mode.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reference.common import block, gelu, layer_norm, linear, normalize, quick_gelu
from reference.dcp import CLIP
from reference.vilt import MAP_PROMPTS, memory_read

TOWERS = {"text": "text", "image": "visual"}  # tower -> the prefix of its weights in the files


def tower_block(x: Tensor, p: dict, tower: str, layer: int, prefix: tuple | None = None) -> Tensor:
    """Block `layer` of a tower over a whole sequence (causal in the text tower; every token is a key)."""
    heads = x.shape[1] // 64
    ones = torch.ones(x.shape[0])
    return block(x, ones, p, f"{TOWERS[tower]}.blocks.{layer}", heads, 1e-5, quick_gelu, tower == "text", prefix)


def text_tokens(ids: Tensor, p: dict) -> Tensor:
    return p["text.token_embedding.weight"][ids] + p["text.positional_embedding"][: ids.shape[0]]


def image_tokens(image: Tensor, p: dict, patch: int) -> Tensor:
    """One normalised image (3 x H x W) -> ln_pre([class | patches row-major] + positions)."""
    conv = p["visual.patch_embed.weight"].reshape(p["visual.patch_embed.weight"].shape[0], -1)
    g = image.shape[1] // patch
    cells = [image[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch].reshape(-1) @ conv.t()
             for i in range(g) for j in range(g)]  # fmt: skip
    tokens = torch.stack([p["visual.class_embedding"], *cells]) + p["visual.positional_embedding"]
    return layer_norm(tokens, p["visual.ln_pre.weight"], p["visual.ln_pre.bias"], 1e-5)


def features(p: dict, pooled: dict[str, Tensor], code: int) -> Tensor:
    """(image feature, text feature) of one sample from each tower's pooled row, the missing half zero."""
    text = (
        layer_norm(pooled["text"], p["text.ln_final.weight"], p["text.ln_final.bias"], 1e-5) @ p["text.text_projection"]
    )
    image = layer_norm(pooled["image"], p["visual.ln_post.weight"], p["visual.ln_post.bias"], 1e-5) @ p["visual.proj"]
    if code == 1:
        text = torch.zeros_like(text)
    if code == 2:
        image = torch.zeros_like(image)
    return torch.cat([image, text])


def classify(p: dict, c: dict, cls: Tensor) -> dict[str, Tensor]:
    out = {"cls_feats": cls}
    for task in ("mmimdb", "food101", "hatememes"):
        if c["loss_names"].get(task, 0) > 0:
            out[f"{task}_logits"] = linear(cls, p, f"{task}_classifier")
    return out


def towers_input(p: dict, c: dict, batch: dict) -> list[dict]:
    """Per sample: each tower's input tokens, how many of its first tokens are real (the query's rows: text up to
    end-of-text, the whole image) and the row its feature is read from; plus the missing code."""
    images = normalize(batch["image"][0], batch["image_hw"], batch["missing_type"], *CLIP, p["visual.proj"].dtype)
    samples = []
    for b in range(images.shape[0]):
        ids = batch["text_ids"][b]
        eot = int(ids.argmax())  # end-of-text has the largest id
        image = image_tokens(images[b], p, c["clip_patch_size"])
        samples.append({
            "code": int(batch["missing_type"][b]),
            "text": (text_tokens(ids, p), eot + 1, eot),
            "image": (image, image.shape[0], 0),
        })  # fmt: skip
    return samples


def bottleneck(x: Tensor, p: dict, name: str) -> Tensor:
    """Linear -> exact GELU -> Linear (file indices 0 and 2), no residual."""
    return linear(gelu(linear(x, p, f"{name}.0")), p, f"{name}.2")


def mdpl_tower(p: dict, c: dict, tower: str, tokens: Tensor, real: int, code: int) -> Tensor:
    """One tower of one sample under MDPL: the last hidden states of its tokens (its prompts left out). `real`:
    how many of the first tokens the memory query pools."""
    gen_layers, shared_layers = list(c["gen_prompt_layers"]), list(c["shared_prompt_layers"])
    memory = "gen_t_prompt_memory" if tower == "text" else "gen_v_prompt_memory"
    neck = "bottleneck_texts" if tower == "text" else "bottleneck_images"
    region, shared_so_far = tokens[:0], 0
    layers = c["clip_text_layers"] if tower == "text" else c["clip_layers"]
    for layer in range(layers):
        gen, shared = layer in gen_layers, layer in shared_layers
        if gen:
            i = gen_layers.index(layer)
            query = tokens[:real].max(0).values
            P = memory_read(query, p[f"{memory}.{i}.prompt_memory"], p[f"{memory}.{i}.prompt_keys"], c["top_k"])
        if shared:
            i = shared_layers.index(layer)
            a_t, a_v = p[f"shared_missing_t.{i}"], p[f"shared_missing_v.{i}"]
            S = bottleneck({0: a_t + a_v, 1: a_t, 2: a_v}[code], p, f"{neck}.{i}")
        if gen and shared:  # [new shared, new generative, earlier prompts]
            region = torch.cat([S, P, region])
        elif gen:  # the new generative prompts after the shared ones inserted so far
            region = torch.cat([region[:shared_so_far], P, region[shared_so_far:]])
        elif shared:
            region = torch.cat([S, region])
        if shared:
            shared_so_far += S.shape[0]
        x = tower_block(torch.cat([region, tokens]), p, tower, layer)
        region, tokens = x[: region.shape[0]], x[region.shape[0] :]
    return tokens


def mdpl_forward(p: dict, c: dict, batch: dict) -> dict[str, Tensor]:
    """MDPL on CLIP: {"cls_feats": B x 2E, "{task}_logits"}."""
    feats = []
    for sample in towers_input(p, c, batch):
        pooled = {}
        for tower in ("text", "image"):
            tokens, real, row = sample[tower]
            pooled[tower] = mdpl_tower(p, c, tower, tokens, real, sample["code"])[row]
        feats.append(features(p, pooled, sample["code"]))
    return classify(p, c, torch.stack(feats))


def map_tower(p: dict, c: dict, tower: str, x: Tensor, code: int) -> tuple[Tensor, int]:
    """One tower of one sample under MAP (or no prompts): (the last hidden states, the prompt tokens in front)."""
    layers = list(c["prompt_layers"])
    prompts = p[f"{MAP_PROMPTS[code]}_{tower}"] if c["prompt_method"] == "map" else None  # n x L x D
    inserted = 0
    for layer in range(c["clip_text_layers"] if tower == "text" else c["clip_layers"]):
        kv = None
        if prompts is not None and layer in layers:
            P = prompts[layers.index(layer)] if c["multi_layer_prompt"] else prompts[0]
            if c["prompt_type"] == "input":
                x, inserted = torch.cat([P, x]), inserted + P.shape[0]
            else:
                half = P.shape[0] // 2
                kv = (P[:half], P[half:]) if c["learnt_p"] else (P, P)
        x = tower_block(x, p, tower, layer, kv)
    return x, inserted


def map_forward(p: dict, c: dict, batch: dict) -> dict[str, Tensor]:
    """MAP ("input" or "attention") or no prompts ("none") on CLIP: {"cls_feats", "{task}_logits"}."""
    feats = []
    for sample in towers_input(p, c, batch):
        pooled = {}
        for tower in ("text", "image"):
            tokens, _, row = sample[tower]
            x, inserted = map_tower(p, c, tower, tokens, sample["code"])
            pooled[tower] = x[inserted + row]
        feats.append(features(p, pooled, sample["code"]))
    return classify(p, c, torch.stack(feats))


def reference_forward(p: dict, c: dict, batch: dict) -> dict[str, Tensor]:
    """The reference of c["prompt_method"] ("mdpl", "map" or "none") on CLIP."""
    return (mdpl_forward if c["prompt_method"] == "mdpl" else map_forward)(p, c, batch)
