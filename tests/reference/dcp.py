"""The DCP reference on CLIP, written from the description of the official DCP code (correlated, modal-common and
dynamic prompts, the towers, the head with the missing half zeroed): per sample, float64, in the file names of
mdpl's CLIP checkpoints. Dropout does not exist in CLIP; the comparison runs in eval mode."""

from __future__ import annotations

import torch
from torch import Tensor

from reference.common import block, gelu, layer_norm, linear, normalize, quick_gelu, softmax_attention

CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
KIND = {0: "complete", 1: "image", 2: "text"}  # the dynamic and common prompt a missing code selects


def mlp(x: Tensor, p: dict, name: str) -> Tensor:
    """Linear -> exact GELU -> Linear (nn.Sequential indices 0 and 2)."""
    return linear(gelu(linear(x, p, f"{name}.0")), p, f"{name}.2")


def prompt_attention(query: Tensor, tokens: Tensor, p: dict, name: str, visible: Tensor) -> Tensor:
    """nn.MultiheadAttention(d, 1): in_proj (q; k; v) with biases, one head, out_proj."""
    w, b, D = p[f"{name}.in_proj_weight"], p[f"{name}.in_proj_bias"], query.shape[1]
    q = query @ w[:D].t() + b[:D]
    k = tokens @ w[D : 2 * D].t() + b[D : 2 * D]
    v = tokens @ w[2 * D :].t() + b[2 * D :]
    return linear(softmax_attention(q, k, v, visible[None, :].expand(q.shape[0], -1)), p, f"{name}.out_proj")


def correlated(p: dict, code: int, depth: int) -> list[tuple[Tensor, Tensor]]:
    """[(image prompts, text prompts)] of layers 0 .. depth-1 for a sample of missing code `code`."""
    image = p["visual_prompt_missing"] if code == 2 else p["visual_prompt_complete"]
    text = p["text_prompt_missing"] if code == 1 else p["text_prompt_complete"]
    layers = []
    for i in range(depth):
        both = torch.cat([image, text], dim=1)
        ln_i = layer_norm(both, p[f"layernorm_image.{i}.weight"], p[f"layernorm_image.{i}.bias"], 1e-5)
        ln_t = layer_norm(both, p[f"layernorm_text.{i}.weight"], p[f"layernorm_text.{i}.bias"], 1e-5)
        image = mlp(ln_i, p, f"compound_prompt_projections_image.{i}")
        text = mlp(ln_t, p, f"compound_prompt_projections_text.{i}")
        layers.append((image, text))
    return layers


def tower(x: Tensor, prompts: list[Tensor], start: Tensor, p: dict, pre: str, layers: int, causal: bool) -> Tensor:
    """A tower's blocks over [correlated | common | dynamic | tokens]: `start` (3n x D) at layer 0, then layer i's
    correlated prompts (`prompts[i]`) replace the first n rows before block i < depth."""
    n = prompts[0].shape[0]
    x = torch.cat([start, x])
    heads = x.shape[1] // 64
    mask = torch.ones(x.shape[0])
    for layer in range(layers):
        if 0 < layer < len(prompts):
            x = torch.cat([prompts[layer], x[n:]])
        x = block(x, mask, p, f"{pre}.blocks.{layer}", heads, eps=1e-5, act=quick_gelu, causal=causal)
    return x


def reference_forward(p: dict, c: dict, batch: dict) -> dict[str, Tensor]:
    """{"cls_feats": B x 2E, "{task}_logits"} of DCP on CLIP (c: the configuration, prompt_layers = its depth)."""
    depth, n = len(c["prompt_layers"]), c["prompt_length"] // 3
    images = normalize(batch["image"][0], batch["image_hw"], batch["missing_type"], *CLIP, p["visual.proj"].dtype)
    patch = c["clip_patch_size"]
    conv = p["visual.patch_embed.weight"].reshape(p["visual.patch_embed.weight"].shape[0], -1)
    feats = []
    for b in range(images.shape[0]):
        code = int(batch["missing_type"][b])
        layers = correlated(p, code, depth)
        common = {0: "common_prompt_complete", 1: "common_prompt_image", 2: "common_prompt_text"}[code]

        ids = batch["text_ids"][b]
        text = p["text.token_embedding.weight"][ids] + p["text.positional_embedding"][: ids.shape[0]]
        eot = int(ids.argmax())
        visible = torch.ones(ids.shape[0], dtype=torch.bool)
        if c["dcp_masked_prompt_attention"]:
            visible = torch.arange(ids.shape[0]) <= eot
        dynamic = prompt_attention(p[f"prompts_dynamic_{KIND[code]}_text"], text, p, "attn_prompt_text", visible)
        start = torch.cat([layers[0][1], mlp(p[common], p, "common_prompt_projection_text"), dynamic])
        x = tower(text, [t for _, t in layers], start, p, "text", c["clip_text_layers"], causal=True)
        x = layer_norm(x[3 * n + eot], p["text.ln_final.weight"], p["text.ln_final.bias"], 1e-5)
        text_feature = x @ p["text.text_projection"]

        img = images[b]
        g = img.shape[1] // patch
        cells = [img[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch].reshape(-1) @ conv.t()
                 for i in range(g) for j in range(g)]  # fmt: skip
        tokens = torch.stack([p["visual.class_embedding"], *cells]) + p["visual.positional_embedding"]
        tokens = layer_norm(tokens, p["visual.ln_pre.weight"], p["visual.ln_pre.bias"], 1e-5)
        visible = torch.ones(tokens.shape[0], dtype=torch.bool)
        dynamic = prompt_attention(p[f"prompts_dynamic_{KIND[code]}_image"], tokens, p, "attn_prompt_image", visible)
        start = torch.cat([layers[0][0], mlp(p[common], p, "common_prompt_projection_image"), dynamic])
        x = tower(tokens, [i for i, _ in layers], start, p, "visual", c["clip_layers"], causal=False)
        x = layer_norm(x[3 * n], p["visual.ln_post.weight"], p["visual.ln_post.bias"], 1e-5)
        image_feature = x @ p["visual.proj"]

        if code == 1:
            text_feature = torch.zeros_like(text_feature)
        if code == 2:
            image_feature = torch.zeros_like(image_feature)
        feats.append(torch.cat([image_feature, text_feature]))
    cls = torch.stack(feats)
    out = {"cls_feats": cls}
    for task in ("mmimdb", "food101", "hatememes"):
        if c["loss_names"].get(task, 0) > 0:
            out[f"{task}_logits"] = linear(cls, p, f"{task}_classifier")
    return out
