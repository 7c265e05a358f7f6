"""The ViLT backbone pieces: SDPA attention with a key-padding mask and prefix keys/values, and the batched
visual_embed (position-embedding resizing, patch order, pads)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from mdpl.model import vilt
from mdpl.model.layers import Attention
from mdpl.model.model import PromptedModel
from mdpl.model.vilt import VisionTransformer
from mdpl.train.settings import Settings
from reference.common import make_batch, small_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _explicit_attention(attn: Attention, x, mask, prefix=None):
    B, N, D = x.shape
    H = attn.num_heads
    q, k, v = attn.qkv(x).split(D, dim=-1)
    if prefix is not None:
        k, v = torch.cat([prefix[0], k], 1), torch.cat([prefix[1], v], 1)
        mask = torch.cat([torch.ones(B, prefix[0].shape[1], dtype=mask.dtype), mask], 1)
    heads = lambda t: t.view(B, -1, H, D // H).transpose(1, 2)  # noqa: E731
    s = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(D // H)
    s = s.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    out = (s.softmax(-1) @ heads(v)).transpose(1, 2).reshape(B, N, D)
    return attn.proj(out)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_attention_masks_padding_keys_and_sees_prefix(with_prefix):
    torch.manual_seed(0)
    attn = Attention(16, 4).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    prefix = (
        (torch.randn(2, 3, 16, dtype=torch.float64), torch.randn(2, 3, 16, dtype=torch.float64))
        if with_prefix
        else None
    )
    out = attn(x, mask, prefix_kv=prefix)
    assert torch.allclose(out, _explicit_attention(attn, x, mask, prefix), atol=1e-12)
    # a padded key does not influence anything
    x2 = x.clone()
    x2[0, 3:] = 100.0
    assert torch.allclose(attn(x2, mask, prefix_kv=prefix)[0, :3], out[0, :3], atol=1e-12)


def _vit():
    torch.manual_seed(0)
    return VisionTransformer(image_size=64, patch_size=16, dim=8, depth=1, num_heads=2, drop=0.0).double()


def _images():
    """Sample 0: full 4 x 6 grid; sample 1: 2 x 3 top-left; sample 2: 4 x 3."""
    img = torch.zeros(3, 3, 64, 96, dtype=torch.float64)
    img[0] = torch.rand(3, 64, 96)
    img[1, :, :32, :48] = torch.rand(3, 32, 48)
    img[2, :, :, :48] = torch.rand(3, 64, 48)
    return img


def _cells(vit, img):
    """Per sample: features of all grid cells row-major, with the per-sample resized position table."""
    x = vit.patch_embed(img).flatten(2).transpose(1, 2)
    table = vit.pos_embed[:, 1:].transpose(1, 2).reshape(1, 8, 4, 4)
    out = []
    for b, (h, w) in enumerate([(4, 6), (2, 3), (4, 3)]):
        pos = F.pad(F.interpolate(table, size=(h, w), mode="bilinear", align_corners=True), (0, 6 - w, 0, 4 - h))
        out.append(x[b] + pos[0].flatten(1).t())
    return out


def test_fixed_order_is_row_major_valid_then_first_invalid_cells():
    vit = _vit()
    img = _images()
    tokens, mask = vit.visual_embed(img, patch_order="fixed")
    assert tokens.shape == (3, 1 + 24, 8)  # cap = max valid count = 24
    cells = _cells(vit, img)
    valid_cells = {0: list(range(24)), 1: [0, 1, 2, 6, 7, 8], 2: [c for c in range(24) if c % 6 < 3]}
    for b in range(3):
        order = valid_cells[b] + [c for c in range(24) if c not in valid_cells[b]]
        assert torch.allclose(tokens[b, 1:], cells[b][order[:24]], atol=1e-12)
        assert mask[b].tolist() == [1] + [1] * len(valid_cells[b]) + [0] * (24 - len(valid_cells[b]))
    cls = vit.cls_token[0, 0] + vit.pos_embed[0, 0]
    assert torch.allclose(tokens[:, 0], cls.expand(3, -1))


def test_random_order_permutes_full_images_and_draws_pads_from_invalid_cells():
    vit = _vit()
    img = _images()
    fixed, _ = vit.visual_embed(img, patch_order="fixed")
    cells = _cells(vit, img)
    torch.manual_seed(1)
    orders = set()
    for _ in range(5):
        tokens, mask = vit.visual_embed(img, patch_order="random")
        # the full image: a permutation of its 24 patches
        match = torch.cdist(tokens[0, 1:], fixed[0, 1:]).argmin(1)
        assert sorted(match.tolist()) == list(range(24))
        orders.add(tuple(match.tolist()))
        # padded images: valid patches row-major as in "fixed", pads are invalid cells with mask 0
        for b, v, invalid in [
            (1, 6, [c for c in range(24) if c not in (0, 1, 2, 6, 7, 8)]),
            (2, 12, [c for c in range(24) if c % 6 >= 3]),
        ]:
            assert torch.equal(tokens[b, : 1 + v], fixed[b, : 1 + v])
            assert mask[b, 1 + v :].sum() == 0
            d = torch.cdist(tokens[b, 1 + v :], cells[b][invalid]).min(1).values
            assert d.max() < 1e-9
    assert len(orders) > 1


def test_max_image_len_keeps_a_random_subset():
    vit = _vit()
    tokens, mask = vit.visual_embed(_images(), max_image_len=5, patch_order="random")
    assert tokens.shape == (3, 6, 8) and mask.all()


def test_position_table_is_resized_once_per_distinct_shape(monkeypatch):
    vit = _vit()
    calls = []
    real = F.interpolate

    def counting(*args, **kwargs):
        if kwargs.get("mode") == "bilinear":
            calls.append(kwargs["size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(vilt.F, "interpolate", counting)
    img = torch.cat([_images(), _images()])  # 6 samples, 3 distinct shapes
    vit.visual_embed(img, patch_order="fixed")
    assert sorted(calls) == [(2, 3), (4, 3), (4, 6)]


def test_random_and_fixed_patch_order_give_the_same_outputs():
    """Attention is permutation-equivariant and every pad is a zero patch, so the order does not matter."""
    c = small_config()
    torch.manual_seed(0)
    model = PromptedModel(Settings.from_config(c).model).double().eval()
    batch = make_batch(c, batch_size=4)  # uint8 images: normalised by the model in float64
    fixed = model(batch)["food101_logits"]
    model.backbone.cfg = dataclasses.replace(model.backbone.cfg, patch_order="random")  # the backbone embeds
    assert torch.allclose(model(batch)["food101_logits"], fixed, atol=1e-10)
