"""PromptedModel (ViLT) with MDPL prompts (and TaskModule's losses):
official parameter layout and counts, freezing, prompt memory, shared prompts,
validation errors, and the masked_query / trim_text / fp32_similarity options."""

import math

import pytest
import torch

from mdpl.errors import ConfigError
from mdpl.model.model import PromptedModel, official_name
from mdpl.model.prompts.mdpl import Bottleneck, PromptMemory, shared_prompts
from mdpl.train.module import TaskModule
from mdpl.train.settings import Settings
from reference.common import base_config, make_batch, small_config

pytestmark = pytest.mark.usefixtures("one_thread")


def build(config: dict) -> PromptedModel:
    return PromptedModel(Settings.from_config(config).model)


@pytest.mark.slow
@pytest.mark.parametrize("task,expected", [("food101", 5_478_821), ("mmimdb", 5_358_935), ("hatememes", 5_326_658)])
def test_trainable_parameters_at_the_official_size(task, expected):
    model = build(base_config(task))
    names = {official_name(n) for n, p in model.named_parameters() if p.requires_grad}  # the file names
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert not any(n.startswith(("transformer.", "text_embeddings.", "token_type_embeddings.")) for n in names)
    for n in [
        "gen_t_prompt_memory.5.prompt_memory",
        "gen_v_prompt_memory.0.prompt_keys",
        "shared_missing_t.5",
        "shared_missing_v.0",
        "bottleneck_texts.5.2.weight",
        "bottleneck_images.0.0.bias",
        "pooler.dense.weight",
        f"{task}_classifier.3.weight",
    ]:
        assert n in names, n
    assert model.prompts.gen_t_prompt_memory[0].prompt_memory.shape == (16, 16, 768)
    assert model.prompts.bottleneck_texts[0][0].out_features == 48  # hidden_size // 16, not bottleneck_dim


def test_seeded_construction_is_deterministic():
    c = small_config()
    torch.manual_seed(7)
    a = build(c).state_dict()
    torch.manual_seed(7)
    b = build(c).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prompt_memory_reads_a_softmax_mix_of_the_top_k_cosine_matches():
    torch.manual_seed(0)
    mem = PromptMemory(size=6, length=2, dim=4, top_k=3).double()
    q = torch.randn(2, 4, dtype=torch.float64)
    out = mem(q)
    for b in range(2):
        cos = torch.stack([torch.cosine_similarity(q[b], k, dim=0) for k in mem.prompt_keys])
        top = cos.argsort(descending=True)[:3]
        w = torch.exp(cos[top]) / torch.exp(cos[top]).sum()
        assert torch.allclose(out[b], sum(w[j] * mem.prompt_memory[i] for j, i in enumerate(top)), atol=1e-12)
    # official init: kaiming normal (a = sqrt 5, fan in) -> std 1/192 for a 16 x 16 x 768 memory
    big = PromptMemory(16, 16, 768, 5)
    assert abs(big.prompt_memory.std().item() - 1 / 192) < 2e-4
    assert abs(big.prompt_keys.std().item() - 1 / 48) < 1e-3


def test_fp32_similarity_breaks_low_precision_ties():
    """Two keys whose cosines to the query differ by less than bf16 resolution: fp32 picks the better one."""
    mem = PromptMemory(size=2, length=1, dim=3, top_k=1, fp32_similarity=True)
    with torch.no_grad():
        mem.prompt_memory.copy_(torch.tensor([[[1.0, 0, 0]], [[0, 1.0, 0]]]))
        mem.prompt_keys.copy_(torch.tensor([[1.0, 0.05, 0], [1.0, 0.04, 0]]))  # key 1 is closer to q
    q = torch.tensor([[1.0, 0.0, 0.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = q @ torch.nn.functional.normalize(mem.prompt_keys, dim=-1).t()
        assert scores[0, 0] == scores[0, 1]  # the official (low-precision) scores tie
        assert torch.equal(mem(q)[0, 0], torch.tensor([0.0, 1.0, 0.0]))


def test_shared_prompts_are_chosen_by_missing_type():
    torch.manual_seed(0)
    a_t, a_v = torch.randn(4, 8), torch.randn(4, 8)
    f_t, f_v = Bottleneck(8, 2, 8), Bottleneck(8, 2, 8)
    s_t, s_v = shared_prompts(a_t, a_v, f_t, f_v, torch.tensor([2, 0, 1, 0]))
    for b, base in enumerate([a_v, a_t + a_v, a_t, a_t + a_v]):
        assert torch.allclose(s_t[b], f_t(base), atol=1e-6) and torch.allclose(s_v[b], f_v(base), atol=1e-6)
    c = small_config()
    batch = dict(make_batch(c), missing_type=torch.tensor([0, 3, -1]))
    with pytest.raises(ValueError, match=r"missing_type codes must be 0, 1 or 2, got \[3, -1\]"):
        build(c)(batch)


@pytest.mark.parametrize("layers,match", [([0, 4], r"in \[0, 4\)"), ([1, 1], "unique"), ("0-5", "list")])
def test_bad_prompt_layers_are_an_error(layers, match):
    with pytest.raises(ConfigError, match=match):
        Settings.from_config(small_config(gen_prompt_layers=layers))


def test_bad_options_are_errors():
    with pytest.raises(ConfigError, match="trim_text=True.*masked_query=True"):
        Settings.from_config(small_config(trim_text=True))
    with pytest.raises(ConfigError, match="prompt_method"):
        Settings.from_config(small_config(prompt_method="coop"))
    with pytest.raises(ConfigError, match="patch_order"):
        Settings.from_config(small_config(patch_order="sorted"))


def _logits(config, batch, **options):
    torch.manual_seed(0)
    model = TaskModule({**config, **options}).double().eval()
    model.model.prune = False  # unpruned: the outputs include text_feats / image_feats
    return model(batch)  # uint8 images: normalised by the model in its dtype


def test_trim_text_gives_the_untrimmed_masked_query_results():
    c = small_config(max_text_len=16)
    batch = make_batch(c, batch_size=3)
    batch["text_masks"][:, 9:] = 0  # the longest real text has 9 tokens
    batch["text_ids"] *= batch["text_masks"]
    full = _logits(c, batch, masked_query=True)
    trimmed = _logits(c, batch, masked_query=True, trim_text=True)
    assert trimmed["text_feats"].shape[1] == 9
    assert torch.allclose(trimmed["food101_logits"], full["food101_logits"], atol=1e-10)
    # the official query pools over [PAD] too, so masking changes the results
    official = _logits(c, batch)
    assert not torch.allclose(official["food101_logits"], full["food101_logits"], atol=1e-6)


def test_forward_outputs_per_task_and_prompt_layout():
    c = small_config(task="mmimdb")
    batch = make_batch(c, batch_size=3, task="mmimdb")
    out = _logits(c, batch)
    assert out["mmimdb_logits"].shape == (3, 23) and out["mmimdb_labels"].shape == (3, 23)
    assert out["mmimdb_loss"].ndim == 0  # the labels' dtype: test_multi_hot_labels_are_float32
    # text_feats / image_feats exclude the prompts: T text tokens and 1 + cap image tokens
    assert out["text_feats"].shape == (3, 10, 32)
    assert out["image_feats"].shape == out["image_masks"].shape + (32,)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out["mmimdb_logits"], out["mmimdb_labels"].double())
    assert torch.allclose(out["mmimdb_loss"], expected)


def test_multi_hot_labels_are_float32():
    """TaskModule's multi-hot labels are float32, whatever the model's dtype (the loss casts them itself)."""
    c = small_config(task="mmimdb")
    out = _logits(c, make_batch(c, batch_size=3, task="mmimdb"))
    assert out["mmimdb_labels"].dtype == torch.float32


def test_frozen_backbone_dropout_is_active_in_train_mode():
    c = small_config(drop_rate=0.1)
    torch.manual_seed(0)
    model = build(c).train()
    batch = make_batch(c)
    assert not torch.allclose(model(batch)["food101_logits"], model(batch)["food101_logits"])
    model.eval()
    assert torch.equal(model(batch)["food101_logits"], model(batch)["food101_logits"])


def test_missing_type_as_a_list_of_floats():
    """The official item gives missing_type as Python floats."""
    c = small_config()
    batch = make_batch(c)
    as_list = dict(batch, missing_type=[float(t) for t in batch["missing_type"]])
    assert torch.allclose(_logits(c, as_list)["food101_logits"], _logits(c, batch)["food101_logits"])
    assert math.isfinite(_logits(c, batch)["food101_loss"].item())


@pytest.mark.parametrize("fp32_similarity", [False, True])
def test_autocast_keeps_the_residual_stream_in_fp32(fp32_similarity):
    """As official AMP: fp16/bf16 matmuls, fp32 residual stream and image tokens, low-precision logits."""
    c = small_config(fp32_similarity=fp32_similarity)
    torch.manual_seed(0)
    model = build(c).eval()
    batch = make_batch(c)
    with torch.no_grad():
        exact = model(batch, prune=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            (stream,) = model.backbone.streams(batch)  # the embedded text and image tokens
            text, image = (side.tokens for side in stream.sides)
            out = model(batch, prune=False)  # unpruned: with text_feats
    assert text.dtype == image.dtype == torch.float32
    assert out["text_feats"].dtype == torch.float32 and out["food101_logits"].dtype == torch.bfloat16
    assert torch.allclose(out["food101_logits"].float(), exact["food101_logits"], atol=0.1)
