"""The ViLT references: MDPL, MAP and prompt-free ViLT, written from docs/official-behaviour.md
(#model-and-prompt-insertion, #map-baseline, #heads-losses-and-metrics). The patch order is the deterministic one
(valid patches row-major, then the first invalid cells row-major as pads), i.e. patch_order="fixed". Dropout is not
modelled (compare in eval mode)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reference.common import block, gelu, layer_norm, linear, normalize

PIXELBERT = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
MAP_PROMPTS = ("complete_prompt", "missing_text_prompt", "missing_img_prompt")  # by missing code


def interp_matrix(n_out: int, n_in: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """n_out x n_in weights of 1-D linear interpolation with align_corners=True."""
    a = torch.zeros(n_out, n_in, dtype=dtype)
    for i in range(n_out):
        s = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        i0 = min(int(math.floor(s)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = s - i0
        a[i, i0] += 1.0 - frac
        a[i, i1] += frac
    return a.to(device)


def text_tokens(ids: Tensor, p: dict) -> Tensor:
    """One sample's text: LN(word + BERT type 0 + position) (eps 1e-12), plus ViLT's text type embedding."""
    te = (
        p["text_embeddings.word_embeddings.weight"][ids]
        + p["text_embeddings.position_embeddings.weight"][: ids.shape[0]]
        + p["text_embeddings.token_type_embeddings.weight"][0]
    )
    te = layer_norm(te, p["text_embeddings.LayerNorm.weight"], p["text_embeddings.LayerNorm.bias"], 1e-12)
    return te + p["token_type_embeddings.weight"][0]


def image_tokens(images: Tensor, p: dict, patch: int) -> tuple[list[Tensor], list[Tensor]]:
    """Per sample: (tokens 1+cap x D, mask 1+cap), fixed patch order."""
    B, _, H, W = images.shape
    gh, gw = H // patch, W // patch
    table = p["transformer.pos_embed"][0]
    D = table.shape[1]
    g = int(round(math.sqrt(table.shape[0] - 1)))
    grid = table[1:].reshape(g, g, D)
    w_conv = p["transformer.patch_embed.proj.weight"].reshape(D, -1)
    per_sample = []
    for b in range(B):
        img = images[b]
        valid_px = (img.sum(0) != 0).cpu()
        rows = [int(math.floor(i * H / gh)) for i in range(gh)]
        cols = [int(math.floor(j * W / gw)) for j in range(gw)]
        valid = torch.tensor([[bool(valid_px[r, c]) for c in cols] for r in rows])
        h, w = int(valid[:, 0].sum()), int(valid[0, :].sum())
        ay, ax = interp_matrix(h, g, grid.dtype, img.device), interp_matrix(w, g, grid.dtype, img.device)
        pos = torch.einsum("ig,jk,gkd->ijd", ay, ax, grid)
        cells = []
        for i in range(gh):
            for j in range(gw):
                feat = img[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch].reshape(-1) @ w_conv.t()
                feat = feat + p["transformer.patch_embed.proj.bias"]
                if i < h and j < w:
                    feat = feat + pos[i, j]
                cells.append((bool(valid[i, j]), feat))
        per_sample.append((h * w, cells))
    cap = max(n for n, _ in per_sample)
    cls = p["transformer.cls_token"][0, 0] + table[0]
    toks, masks = [], []
    for _, cells in per_sample:
        ordered = [c for c in cells if c[0]] + [c for c in cells if not c[0]]
        ordered = ordered[:cap]
        toks.append(torch.stack([cls] + [f for _, f in ordered]) + p["token_type_embeddings.weight"][1])
        masks.append(torch.tensor([1] + [int(v) for v, _ in ordered], device=images.device))
    return toks, masks


def memory_read(q: Tensor, mem: Tensor, keys: Tensor, top_k: int) -> Tensor:
    qn = q / torch.clamp(torch.sqrt((q * q).sum()), min=1e-12)
    kn = keys / torch.clamp(torch.sqrt((keys * keys).sum(1, keepdim=True)), min=1e-12)
    scores = [float((qn * kn[i]).sum().detach()) for i in range(keys.shape[0])]
    chosen = sorted(range(len(scores)), key=lambda i: -scores[i])[: min(top_k, keys.shape[0])]
    r = torch.stack([(qn * kn[i]).sum() for i in chosen])
    e = torch.exp(r - r.max())
    w = e / e.sum()
    return sum(w[j] * mem[i] for j, i in enumerate(chosen))


def mdpl_forward(p: dict, config: dict, batch: dict) -> dict[str, Tensor]:
    """MDPL: {"cls_feats": B x D, f"{task}_logits": B x C} for the active tasks."""
    c = config
    heads = c["num_heads"]
    gen_layers, shared_layers = list(c["gen_prompt_layers"]), list(c["shared_prompt_layers"])
    images = normalize(
        batch["image"][0], batch["image_hw"], batch["missing_type"], *PIXELBERT, p["transformer.pos_embed"].dtype
    )
    img_toks, img_masks = image_tokens(images, p, c["patch_size"])
    ids, tmask = batch["text_ids"], batch["text_masks"]
    T = ids.shape[1]
    feats = []
    for b in range(ids.shape[0]):
        te = text_tokens(ids[b], p)
        tm, im, ie = tmask[b], img_masks[b], img_toks[b]
        mtype = int(batch["missing_type"][b])
        t_side, v_side = te[:0], te[:0]  # the prompt tokens on each side (0 x D at first)
        text, image = te, ie
        n_shared_t = n_shared_v = 0
        for layer in range(c["num_layers"]):
            if layer in gen_layers or layer in shared_layers:
                if layer in gen_layers:
                    i = gen_layers.index(layer)
                    if c.get("masked_query"):
                        q_t = torch.stack([text[j] for j in range(T) if tm[j]]).max(0).values
                        q_v = torch.stack([image[j] for j in range(image.shape[0]) if im[j]]).max(0).values
                    else:
                        q_t, q_v = text.max(0).values, image.max(0).values
                    p_t = memory_read(
                        q_t,
                        p[f"gen_t_prompt_memory.{i}.prompt_memory"],
                        p[f"gen_t_prompt_memory.{i}.prompt_keys"],
                        c["top_k"],
                    )
                    p_v = memory_read(
                        q_v,
                        p[f"gen_v_prompt_memory.{i}.prompt_memory"],
                        p[f"gen_v_prompt_memory.{i}.prompt_keys"],
                        c["top_k"],
                    )
                if layer in shared_layers:
                    i = shared_layers.index(layer)
                    a_t, a_v = p[f"shared_missing_t.{i}"], p[f"shared_missing_v.{i}"]
                    base = {0: a_t + a_v, 1: a_t, 2: a_v}[mtype]
                    s_t = linear(gelu(linear(base, p, f"bottleneck_texts.{i}.0")), p, f"bottleneck_texts.{i}.2")
                    s_v = linear(gelu(linear(base, p, f"bottleneck_images.{i}.0")), p, f"bottleneck_images.{i}.2")
                if layer in gen_layers and layer in shared_layers:
                    t_side = torch.cat([s_t, p_t, t_side])
                    v_side = torch.cat([s_v, p_v, v_side])
                elif layer in gen_layers:
                    t_side = torch.cat([t_side[:n_shared_t], p_t, t_side[n_shared_t:]])
                    v_side = torch.cat([v_side[:n_shared_v], p_v, v_side[n_shared_v:]])
                else:
                    t_side = torch.cat([s_t, t_side])
                    v_side = torch.cat([s_v, v_side])
                if layer in shared_layers:
                    n_shared_t += s_t.shape[0]
                    n_shared_v += s_v.shape[0]
            nt, nv = t_side.shape[0], v_side.shape[0]
            x = torch.cat([t_side, text, v_side, image])
            mask = torch.cat([tm.new_ones(nt), tm, im.new_ones(nv), im])
            x = block(x, mask, p, f"transformer.blocks.{layer}", heads)
            t_side = x[:nt]
            text = x[nt : nt + T]
            v_side = x[nt + T : nt + T + nv]
            image = x[nt + T + nv :]
        x = layer_norm(x, p["transformer.norm.weight"], p["transformer.norm.bias"], 1e-6)
        feats.append(torch.tanh(linear(x[nt], p, "pooler.dense")))  # the text [CLS]
    return classify(p, c, torch.stack(feats))


def classify(p: dict, c: dict, cls: Tensor) -> dict[str, Tensor]:
    """{"cls_feats", "{task}_logits"}: the ViLT classifier (Linear, LayerNorm, GELU, Linear) of each task."""
    out = {"cls_feats": cls}
    for task in ("mmimdb", "food101", "hatememes"):
        if c["loss_names"].get(task, 0) > 0:
            h = linear(cls, p, f"{task}_classifier.0")
            h = gelu(layer_norm(h, p[f"{task}_classifier.1.weight"], p[f"{task}_classifier.1.bias"], 1e-5))
            out[f"{task}_logits"] = linear(h, p, f"{task}_classifier.3")
    return out


def map_forward(p: dict, c: dict, batch: dict) -> dict[str, Tensor]:
    """MAP "input": at each prompt layer prepend that layer's prompt (final [P_last .. P_0, TEXT, IMAGE]), pool the
    text [CLS] behind them. "attention": prefix keys = first half, values = second half (the whole prompt for both
    without learnt_p), pool token 0. "none": no prompts, pool token 0."""
    images = normalize(
        batch["image"][0], batch["image_hw"], batch["missing_type"], *PIXELBERT, p["transformer.pos_embed"].dtype
    )
    img_toks, img_masks = image_tokens(images, p, c["patch_size"])
    ids, tmask = batch["text_ids"], batch["text_masks"]
    layers = c["prompt_layers"]
    feats = []
    for b in range(ids.shape[0]):
        x = torch.cat([text_tokens(ids[b], p), img_toks[b]])
        mask = torch.cat([tmask[b], img_masks[b]])
        prompt = p[MAP_PROMPTS[int(batch["missing_type"][b])]] if c["prompt_method"] == "map" else None
        inserted = 0
        for layer in range(c["num_layers"]):
            pre, kv = f"transformer.blocks.{layer}", None
            if prompt is not None and layer in layers:
                P = prompt[layers.index(layer)] if c["multi_layer_prompt"] else prompt[0]  # L x D
                if c["prompt_type"] == "input":
                    x = torch.cat([P, x])
                    mask = torch.cat([torch.ones(P.shape[0], dtype=mask.dtype), mask])
                    inserted += P.shape[0]
                else:
                    kv = (P[: P.shape[0] // 2], P[P.shape[0] // 2 :]) if c["learnt_p"] else (P, P)
            x = block(x, mask, p, pre, c["num_heads"], prefix=kv)
        x = layer_norm(x, p["transformer.norm.weight"], p["transformer.norm.bias"], 1e-6)
        feats.append(torch.tanh(linear(x[inserted], p, "pooler.dense")))
    return classify(p, c, torch.stack(feats))


def reference_forward(p: dict, c: dict, batch: dict) -> dict[str, Tensor]:
    """The reference of c["prompt_method"] on ViLT."""
    return (mdpl_forward if c["prompt_method"] == "mdpl" else map_forward)(p, c, batch)
