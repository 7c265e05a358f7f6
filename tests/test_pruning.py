"""Exact pruning: PromptedModel (ViLT) with prune on (the default) against the same model with prune off (the official,
unpruned computation): the same logits and gradients of every trainable parameter, up to float rounding,
for MDPL (prompt layers ending early, late, at the last layer, none), masked_query off and on, MAP (input and
attention prompts) and plain ViLT, on batches with [PAD] text tokens and padded image patches."""

import pytest
import torch

from mdpl.config import make_config
from mdpl.model.layers import compact, kept_rows
from mdpl.model.model import PromptedModel, official_name
from mdpl.train.module import task_losses
from mdpl.train.settings import model_config, resolve
from reference import common as reference
from reference.common import make_batch
from reference.vilt import reference_forward

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {**reference.SMALL, "prompt_length": 4, "prompt_layers": [0, 1]}  # the reference model, MAP prompts too
TASKS = ("food101", "mmimdb", "hatememes")
TOL = {torch.float64: (1e-10, 1e-9), torch.float32: (1e-4, 1e-4)}  # (relative, absolute)
# (gen_prompt_layers, shared_prompt_layers): memory queries ending early, at the last layer, never
MDPL_LAYERS = {
    "early": ([0, 1], [0, 1]),
    "late": ([0, 3], [1, 3]),
    "last_only": ([3], []),
    "shared_only": ([], [0, 1]),
    "none": ([], []),
}


def build(
    task: str, method: str = "mdpl", dtype: torch.dtype = torch.float64, seed: int = 0, **updates
) -> tuple[dict, PromptedModel]:
    named = f"task_finetune_{task}" + ("_map" if method == "map" else "")
    config = make_config(named, **{**SMALL, "prompt_method": method, **updates})
    torch.manual_seed(seed)
    model = PromptedModel(model_config(resolve(config))).to(dtype).eval()  # eval: no dropout
    with torch.no_grad():  # random prompts and heads so that every gradient is non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return config, model


def padded_batch(config: dict, batch_size: int = 4, task: str = "food101") -> dict:
    """make_batch's texts (10, 7, 4, 2 real tokens), the first cut to 8: every text has [PAD]s, and the
    batch's longest real text is shorter than the text length."""
    batch = make_batch(config, batch_size=batch_size, image_hw=(64, 96), task=task)
    masks = batch["text_masks"].clone()
    masks[0, 8:] = 0
    return dict(batch, text_masks=masks, text_ids=batch["text_ids"] * masks)  # uint8 images: the model normalises them


def loss_of(task: str, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The task's training loss (TaskModule's)."""
    return task_losses((task,), {f"{task}_logits": logits}, label)[f"{task}_loss"]


def run(model: PromptedModel, batch: dict, task: str, prune: bool) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    out = model(batch, prune=prune)
    loss_of(task, out[f"{task}_logits"], batch["label"]).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def assert_close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    rel, abs_ = TOL[dtype]
    a, b = a.detach(), b.detach()
    diff = float((a - b).abs().max())
    assert diff <= abs_ + rel * float(b.abs().max()), f"{what}: pruned differs from unpruned by {diff}"


def check(
    task: str, method: str, dtype: torch.dtype, batch_size: int = 4, permute_image: bool = False, **updates
) -> PromptedModel:
    config, model = build(task, method, dtype, **updates)
    batch = padded_batch(config, batch_size, task)
    if permute_image:  # real image patches scattered over the sequence (not a prefix), as a mask may have them
        streams = model.backbone.streams

        def scattered(b, generator=None):
            out = streams(b, generator)
            (stream,) = out
            image = stream.sides[1]  # the ViLT stream: the text side, then the image side
            shuffled = torch.randperm(image.tokens.shape[1] - 1, generator=torch.Generator().manual_seed(1))
            order = torch.cat([torch.zeros(1, dtype=torch.long), 1 + shuffled])  # the image [CLS] stays first
            image.tokens, image.mask = image.tokens[:, order], image.mask[:, order]
            return out

        model.backbone.streams = scattered
    pruned, g_pruned = run(model, batch, task, prune=True)
    full, g_full = run(model, batch, task, prune=False)
    if permute_image:
        assert not bool((full["image_masks"][:, :-1] >= full["image_masks"][:, 1:]).all()), "not scattered"
    assert (full["image_masks"] == 0).any(), "the batch must have padded image patches"
    assert_close(pruned[f"{task}_logits"], full[f"{task}_logits"], dtype, "logits")
    assert_close(pruned["cls_feats"], full["cls_feats"], dtype, "cls_feats")
    assert g_pruned.keys() == g_full.keys()
    for n in g_full:
        assert_close(g_pruned[n], g_full[n], dtype, f"gradient of {n}")
        assert g_full[n].abs().sum() > 0, f"{n}: zero gradient, the comparison says nothing"
    assert "text_feats" not in pruned and "image_feats" not in pruned  # the last layer's other rows: not computed
    assert full["text_feats"].shape[1] == full["text_masks"].shape[1]
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("masked_query", [False, True], ids=["official_query", "masked_query"])
@pytest.mark.parametrize("layers", list(MDPL_LAYERS))
@pytest.mark.parametrize("task", TASKS)
def test_mdpl_pruned_matches_unpruned(task, layers, masked_query, dtype):
    gen, shared = MDPL_LAYERS[layers]
    check(task, "mdpl", dtype, gen_prompt_layers=gen, shared_prompt_layers=shared, masked_query=masked_query)


@pytest.mark.parametrize(
    "task,layers,masked_query",
    [
        ("food101", "early", False),
        ("mmimdb", "late", False),
        ("hatememes", "last_only", True),
        ("food101", "none", False),
    ],
)
def test_pruned_matches_the_float64_reference(task, layers, masked_query):
    """Pruned logits and trainable gradients against the slow independent reference (tests/reference/vilt.py)."""
    gen, shared = MDPL_LAYERS[layers]
    config, model = build(task, gen_prompt_layers=gen, shared_prompt_layers=shared, masked_query=masked_query)
    batch = padded_batch(config, task=task)
    out, grads = run(model, batch, task, prune=True)
    grads = {official_name(n): g for n, g in grads.items()}  # the reference reads the file (official) names
    params = {k: v.detach().clone() for k, v in model.official_state_dict().items()}
    for n in grads:
        params[n].requires_grad_(True)
    logits = reference_forward(params, config, batch)[f"{task}_logits"]
    assert_close(out[f"{task}_logits"], logits, torch.float64, "logits")
    loss = loss_of(task, logits, batch["label"])
    for n, g in zip(grads, torch.autograd.grad(loss, [params[n] for n in grads])):
        assert_close(grads[n], g, torch.float64, f"gradient of {n}")


@pytest.mark.parametrize("task", TASKS)
def test_mdpl_trim_text_pruned_matches_unpruned(task):
    """trim_text (with masked_query) cuts the text before pruning drops the remaining pads."""
    check(task, "mdpl", torch.float64, masked_query=True, trim_text=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("layers", [[0, 1], [1, 3]], ids=["early", "late"])
@pytest.mark.parametrize("prompt_type", ["input", "attention"])
@pytest.mark.parametrize("task", TASKS)
def test_map_pruned_matches_unpruned(task, prompt_type, layers, dtype):
    check(task, "map", dtype, prompt_type=prompt_type, prompt_layers=layers)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("task", TASKS)
def test_plain_vilt_pruned_matches_unpruned(task, dtype):
    check(task, "none", dtype)


@pytest.mark.parametrize(
    "method,updates",
    [
        ("mdpl", dict(gen_prompt_layers=[0, 1], shared_prompt_layers=[0, 1])),
        ("mdpl", dict(gen_prompt_layers=[0, 1], shared_prompt_layers=[0, 1], masked_query=True)),
        ("map", dict(prompt_type="input", prompt_layers=[0, 2])),
        ("none", {}),
    ],
    ids=["mdpl", "mdpl_masked_query", "map", "none"],
)
def test_scattered_real_image_patches(method, updates):
    """Real patches anywhere in the image sequence: each sample's are gathered to the front."""
    check("food101", method, torch.float64, permute_image=True, **updates)


def test_the_sequences_really_shrink():
    """Official query, prompts at 0 and 1: blocks 0 sees every token; from block 1 (after the last query)
    only the batch's longest real text and image; the last block computes one row (per sample)."""
    _, model = build("food101", gen_prompt_layers=[0, 1], shared_prompt_layers=[0, 1])
    batch = padded_batch(make_config("task_finetune_food101", **SMALL))
    seen = []

    def record(block, args, kwargs, out):  # Block(x, mask, causal, prefix_kv, keys, rows)
        keys = args[4] if len(args) > 4 else kwargs.get("keys")
        seen.append((args[0].shape[1], out.shape[1], None if keys is None else keys[0].shape[1]))

    hooks = [b.register_forward_hook(record, with_kwargs=True) for b in model.backbone.transformer.blocks]
    model(batch)
    for h in hooks:
        h.remove()
    # the embedded masks (those of the unpruned forward: see test_pruned_forward_returns_the_embedded_masks)
    out = model(batch, prune=False)
    T, I = out["text_masks"].shape[1], out["image_masks"].shape[1]
    real_t, real_i = int(out["text_masks"].sum(1).max()), int(out["image_masks"].sum(1).max())
    # the largest image fixes the image length (visual_embed), so only the text side gets shorter here
    assert real_t < T and real_i == I and bool((out["image_masks"] == 0).any())
    p0, p1 = 3 + 2, 2 * (3 + 2)  # prompts per side after layers 0 and 1 (gen 3 + shared 2 each)
    n_keys0 = int((torch.cat([out["text_masks"], out["image_masks"]], 1).sum(1)).max()) + 2 * p0
    assert seen[0] == (2 * p0 + T + I, 2 * p0 + T + I, n_keys0)  # (c): all rows are queries, real keys only
    assert seen[1] == (2 * p1 + real_t + real_i,) * 2 + (None,)  # (a)
    assert seen[2] == (2 * p1 + real_t + real_i,) * 2 + (None,)
    assert seen[3] == (2 * p1 + real_t + real_i, 1, None)  # (b)


def test_pruned_forward_returns_the_embedded_masks():
    """text_masks / image_masks are the embedded sequences' masks, pruned or not."""
    _, model = build("food101", gen_prompt_layers=[0, 1], shared_prompt_layers=[0, 1])
    batch = padded_batch(make_config("task_finetune_food101", **SMALL))
    pruned, full = model(batch), model(batch, prune=False)
    assert pruned["text_masks"].shape[1] == batch["text_masks"].shape[1]
    for key in ("text_masks", "image_masks"):
        assert torch.equal(pruned[key], full[key]), key


def test_prune_is_the_default_and_can_be_switched_off():
    _, model = build("food101")
    assert model.prune is True
    assert "prune" not in str(model.state_dict().keys())
    batch = padded_batch(make_config("task_finetune_food101", **SMALL), batch_size=3)
    assert "text_feats" not in model(batch)
    model.prune = False
    out = model(batch)
    assert out["text_feats"].shape[1] == 10 and out["image_feats"].shape[1] == out["image_masks"].shape[1]


def test_kept_rows_compact_each_sample_to_the_front():
    mask = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    tokens = torch.arange(15.0).view(3, 5, 1)
    index, valid = kept_rows(mask != 0)
    assert index.tolist()[0][:3] == [0, 2, 4] and index.tolist()[1][:1] == [1] and index.tolist()[2] == [0, 1, 2, 3]
    assert valid.tolist() == [[True, True, True, False], [True, False, False, False], [True] * 4]
    out, m = compact(tokens, mask, (index, valid))
    assert m.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert out[0, :3, 0].tolist() == [0.0, 2.0, 4.0] and out[1, 0, 0] == 6.0
    keep = (mask != 0).index_fill(1, torch.tensor([0]), True)
    index, valid = kept_rows(keep)  # the text [CLS] row stays, even if masked
    assert index[1, :2].tolist() == [0, 1] and compact(tokens, mask, (index, valid))[1][1].tolist()[:2] == [0, 1]
