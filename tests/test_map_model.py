"""MAP (prompt_method "map") and plain ViLT (prompt_method "none") against a slow, independent reference
written from docs/official-behaviour.md#map-baseline: per-sample loops, prompts picked per sample with
if/elif, explicit softmax attention with the prefix keys/values spelt out, float64. Compared on logits and
on the gradients of every trainable parameter, on batches mixing the three missing types.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from mdpl.modules import PromptedViLT, TaskModule, create_model
from mdpl.reference import gelu, image_tokens, layer_norm, linear, make_batch, small_config, text_tokens
from mdpl.settings import ConfigError, Settings

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ("complete_prompt", "missing_text_prompt", "missing_img_prompt")


def map_config(**overrides) -> dict:
    """Tiny ViLT (D=32, 2 heads, 3 layers, 64-pixel images, 8 text tokens), MAP prompts at layers 0 and 2."""
    c = small_config(
        num_heads=2, num_layers=3, max_text_len=8, prompt_method="map", prompt_length=4, prompt_layers=[0, 2]
    )
    c.update(overrides)
    return c


def build(config: dict) -> PromptedViLT:
    return PromptedViLT(Settings.from_config(config).model)


def load(config: dict) -> PromptedViLT:
    """With the weights `config` asks for (load_path with test_only: a fine-tuned checkpoint)."""
    return create_model(Settings.from_config(config))


def mixed_batch(config: dict, seed: int = 0) -> dict:
    batch = make_batch(config, batch_size=6, seed=seed)
    batch["missing_type"] = torch.tensor([2, 0, 1, 1, 2, 0])  # every type, not in code order
    return batch


# ---- the reference


def ref_attention(x, mask, p, pre, heads, prefix_k=None, prefix_v=None):
    """One sample: x N x D, key mask N; prefix_k / prefix_v P x D are used as keys / values as they are
    (no projection), always visible, split into heads like the projected ones."""
    N, D = x.shape
    dh = D // heads
    qkv = linear(x, p, f"{pre}.qkv")
    q, k, v = qkv[:, :D], qkv[:, D : 2 * D], qkv[:, 2 * D :]
    if prefix_k is not None:
        k, v = torch.cat([prefix_k, k]), torch.cat([prefix_v, v])
        mask = torch.cat([torch.ones(prefix_k.shape[0], dtype=mask.dtype), mask])
    visible = [j for j in range(k.shape[0]) if mask[j]]  # masked keys are left out, not set to -inf
    k, v = k[visible], v[visible]
    out = []
    for h in range(heads):
        cols = slice(h * dh, (h + 1) * dh)
        s = q[:, cols] @ k[:, cols].t() / math.sqrt(dh)
        e = torch.exp(s - s.max(dim=1, keepdim=True).values)
        out.append(e / e.sum(dim=1, keepdim=True) @ v[:, cols])
    return linear(torch.cat(out, dim=1), p, f"{pre}.proj")


def ref_block(x, mask, p, pre, heads, prefix_k=None, prefix_v=None):
    h = layer_norm(x, p[f"{pre}.norm1.weight"], p[f"{pre}.norm1.bias"], 1e-6)
    x = x + ref_attention(h, mask, p, f"{pre}.attn", heads, prefix_k, prefix_v)
    y = layer_norm(x, p[f"{pre}.norm2.weight"], p[f"{pre}.norm2.bias"], 1e-6)
    return x + linear(gelu(linear(y, p, f"{pre}.mlp.fc1")), p, f"{pre}.mlp.fc2")


def reference_forward(p: dict, c: dict, batch: dict, task: str = "food101"):
    """MAP "input": at each prompt layer prepend that layer's prompt (final [P_last .. P_0, TEXT, IMAGE]),
    pool the text [CLS] behind them. MAP "attention": prefix keys = first half, values = second half (whole
    prompt for both without learnt_p), pool token 0. "none": no prompts, pool token 0."""
    img_toks, img_masks = image_tokens(batch["image"][0], p, c["patch_size"])
    ids, tmask = batch["text_ids"], batch["text_masks"]
    layers = c["prompt_layers"]
    feats = []
    for b in range(ids.shape[0]):
        te = text_tokens(ids[b], p)
        x = torch.cat([te, img_toks[b]])
        mask = torch.cat([tmask[b], img_masks[b]])
        mtype = int(batch["missing_type"][b])
        if mtype == 0:
            prompt = p["complete_prompt"] if c["prompt_method"] == "map" else None
        elif mtype == 1:
            prompt = p["missing_text_prompt"] if c["prompt_method"] == "map" else None
        elif mtype == 2:
            prompt = p["missing_img_prompt"] if c["prompt_method"] == "map" else None
        inserted = 0
        for layer in range(c["num_layers"]):
            pre = f"transformer.blocks.{layer}"
            if prompt is None or layer not in layers:
                x = ref_block(x, mask, p, pre, c["num_heads"])
                continue
            P = prompt[layers.index(layer)] if c["multi_layer_prompt"] else prompt[0]  # L x D
            if c["prompt_type"] == "input":
                x = torch.cat([P, x])
                mask = torch.cat([torch.ones(P.shape[0], dtype=mask.dtype), mask])
                inserted += P.shape[0]
                x = ref_block(x, mask, p, pre, c["num_heads"])
            elif c["learnt_p"]:
                half = P.shape[0] // 2
                x = ref_block(x, mask, p, pre, c["num_heads"], P[:half], P[half:])
            else:
                x = ref_block(x, mask, p, pre, c["num_heads"], P, P)
        x = layer_norm(x, p["transformer.norm.weight"], p["transformer.norm.bias"], 1e-6)
        cls = x[inserted] if c["prompt_method"] == "map" and c["prompt_type"] == "input" else x[0]
        feats.append(torch.tanh(linear(cls, p, "pooler.dense")))
    h = linear(torch.stack(feats), p, f"{task}_classifier.0")
    h = gelu(layer_norm(h, p[f"{task}_classifier.1.weight"], p[f"{task}_classifier.1.bias"], 1e-5))
    return linear(h, p, f"{task}_classifier.3")


# ---- fast vs reference


def _compare(config: dict, batch: dict, tol: float = 1e-6) -> None:
    torch.manual_seed(0)
    model = TaskModule(config).double().eval()  # eval: no dropout
    with torch.no_grad():  # random prompts: the official init (zeros, one row of ones) hides mistakes
        for name in PROMPTS:
            if hasattr(model, name):
                getattr(model, name).normal_()
    batch = dict(batch, image=[batch["image"][0].double()])
    out = model(batch)
    out["food101_loss"].backward()

    trainable = [n for n, q in model.named_parameters() if q.requires_grad]
    p = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for n in trainable:
        p[n].requires_grad_(True)
    logits = reference_forward(p, config, batch)
    assert (out["food101_logits"] - logits).abs().max() <= tol
    grads = torch.autograd.grad(F.cross_entropy(logits, out["food101_labels"]), [p[n] for n in trainable])
    named = dict(model.named_parameters())
    for n, g in zip(trainable, grads):
        diff = (named[n].grad - g).abs().max()
        assert diff <= tol, f"{n}: gradient differs by {diff}"
        assert named[n].grad.abs().sum() > 0, f"{n}: zero gradient"


@pytest.mark.parametrize("prompt_type", ["input", "attention"])
def test_map_matches_reference(prompt_type):
    c = map_config(prompt_type=prompt_type)
    _compare(c, mixed_batch(c))


@pytest.mark.parametrize("prompt_type", ["input", "attention"])
def test_map_variants_match_reference(prompt_type):
    """Unordered prompt layers; one prompt shared by all prompt layers (multi_layer_prompt False)."""
    _compare(map_config(prompt_type=prompt_type, prompt_layers=[2, 0, 1]), mixed_batch(map_config(), seed=1))
    _compare(map_config(prompt_type=prompt_type, multi_layer_prompt=False), mixed_batch(map_config(), seed=2))


@pytest.mark.parametrize("prompt_type", ["input", "attention"])
def test_frozen_prompts_match_reference(prompt_type):
    """learnt_p=False: prompts frozen; "attention" uses the whole prompt as keys and values; "input" with
    several prompt layers works (the official mask there is L long instead of L·layers and crashes)."""
    c = map_config(prompt_type=prompt_type, learnt_p=False, prompt_length=3)
    _compare(c, mixed_batch(c))


def test_none_matches_reference_and_trains_only_pooler_and_head():
    c = map_config(prompt_method="none")
    model = build(c)
    trainable = {n.split(".")[0] for n, q in model.named_parameters() if q.requires_grad}
    assert trainable == {"pooler", "food101_classifier"}
    _compare(c, mixed_batch(c))


# ---- parameters


def test_prompt_parameters_follow_official_names_shapes_and_init():
    model = build(map_config(prompt_length=6, prompt_layers=[0, 1, 2]))
    trainable = {n.split(".")[0] for n, q in model.named_parameters() if q.requires_grad}
    assert trainable == {"pooler", "food101_classifier", *PROMPTS}
    for name, row in zip(PROMPTS, (0, 2, 1)):
        t = getattr(model, name)
        assert t.shape == (3, 6, 32)
        expected = torch.zeros(3, 6, 32)
        expected[:, row] = 1
        assert torch.equal(t.detach(), expected), name
    # prefix tuning also marks a row of the value half; a single prompt without multi_layer_prompt
    model = build(map_config(prompt_type="attention", prompt_length=6, multi_layer_prompt=False))
    for name, row in zip(PROMPTS, (0, 2, 1)):
        t = getattr(model, name).detach()
        assert t.shape == (1, 6, 32)
        assert t.sum(dim=(0, 2)).nonzero().flatten().tolist() == [row, 3 + row]
    # learnt_p=False freezes them; the rest of the model trains as usual
    model = build(map_config(learnt_p=False))
    assert not any(getattr(model, n).requires_grad for n in PROMPTS)
    assert model.pooler.dense.weight.requires_grad


def test_input_prompts_lead_the_sequence_and_cls_is_the_text_cls():
    """ "input" with L=4 at 2 layers: text_feats start after the 8 prompt tokens, and cls pools the text [CLS]."""
    c = map_config()
    model = build(c).eval()
    batch = mixed_batch(c)
    out = model(batch, prune=False)  # unpruned: with text_feats
    assert out["text_feats"].shape[1] == c["max_text_len"]
    assert torch.allclose(out["cls_feats"], model.pooler(out["text_feats"][:, 0]))
    model = build(map_config(prompt_type="attention")).eval()
    out = model(batch, prune=False)  # nothing inserted: token 0 is the text [CLS]
    assert torch.allclose(out["cls_feats"], model.pooler(out["text_feats"][:, 0]))


def test_prompts_are_picked_by_missing_type():
    """Changing one type's prompt changes exactly the samples of that type."""
    c = map_config()
    model = build(c).eval()
    batch = mixed_batch(c)
    before = model(batch)["food101_logits"]
    with torch.no_grad():
        model.missing_text_prompt.add_(torch.randn_like(model.missing_text_prompt))
    changed = (model(batch)["food101_logits"] - before).abs().amax(1) > 1e-6
    assert changed.tolist() == (batch["missing_type"] == 1).tolist()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"prompt_type": "cross"}, "prompt_type"),
        ({"prompt_type": "attention", "prompt_length": 5}, "prompt_length=5"),
        ({"prompt_layers": [0, 3]}, "prompt_layers"),
        ({"prompt_layers": [1, 1]}, "prompt_layers"),
        ({"prompt_length": 0}, "prompt_length"),
    ],
)
def test_bad_map_config_is_a_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_config(map_config(**overrides))


def test_unknown_missing_type_is_a_clear_error():
    c = map_config()
    batch = dict(mixed_batch(c), missing_type=torch.tensor([0, 1, 3, 0, 1, 2]))
    with pytest.raises(ValueError, match="missing_type"):
        build(c)(batch)


# ---- checkpoints


def _save(model, path) -> str:
    torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


def test_map_checkpoint_round_trip_and_foreign_checkpoints_are_errors(tmp_path):
    c = map_config()
    torch.manual_seed(1)
    trained = build(c).eval()
    with torch.no_grad():
        trained.missing_img_prompt.normal_()
    path = _save(trained, tmp_path / "map.ckpt")
    loaded = load(dict(c, load_path=path, test_only=True)).eval()
    batch = mixed_batch(c)
    assert torch.equal(loaded(batch)["food101_logits"], trained(batch)["food101_logits"])

    with pytest.raises(ValueError, match="MAP"):  # a MAP checkpoint into MDPL
        load(dict(c, prompt_method="mdpl", load_path=path, test_only=True))
    with pytest.raises(ValueError, match="MAP"):  # ... or into plain ViLT
        load(dict(c, prompt_method="none", load_path=path, test_only=True))
    mdpl = _save(build(dict(c, prompt_method="mdpl")), tmp_path / "mdpl.ckpt")
    with pytest.raises(ValueError, match="MDPL"):  # an MDPL checkpoint into MAP
        load(dict(c, load_path=mdpl, test_only=True))
    other_shape = _save(build(dict(c, prompt_length=6)), tmp_path / "map6.ckpt")
    with pytest.raises(ValueError, match="complete_prompt"):  # MAP with another prompt_length
        load(dict(c, load_path=other_shape, test_only=True))


# ---- named configs


@pytest.mark.parametrize("task", ["mmimdb", "food101", "hatememes"])
def test_map_named_configs_are_the_task_configs_with_maps_published_settings(task):
    from mdpl.config import make_config

    mdpl, map_ = make_config(f"task_finetune_{task}"), make_config(f"task_finetune_{task}_map")
    changed = {k for k in mdpl if mdpl[k] != map_[k]}
    assert changed == {"exp_name", "learning_rate", "seed", "missing_type", "prompt_method"}
    assert map_["learning_rate"] == 1e-2 and map_["seed"] == 0 and map_["prompt_method"] == "map"
    assert map_["missing_type"] == {"train": "both", "val": "both", "test": "both"}
