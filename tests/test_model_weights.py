"""Weight loading: official ViLT checkpoints, Hugging Face ViLT state dicts, timm ViT weights and fine-tuned
checkpoints, and the errors for checkpoints that do not fit."""

import logging
import os

import pytest
import torch
import torch.nn.functional as F

from helpers import create_model
from mdpl.errors import CheckpointError
from mdpl.model.model import PromptedModel
from mdpl.model.weights import IGNORED_ON_LOAD, convert_hf_vilt
from mdpl.train.module import TaskModule
from mdpl.train.settings import Settings
from reference.common import make_batch, small_config, small_hf_config

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONE = ("text_embeddings.", "token_type_embeddings.", "transformer.", "pooler.")  # official (file) names


def build(config: dict) -> PromptedModel:
    """The model of `config`, without loading anything."""
    return PromptedModel(Settings.from_config(config).model)


def load(config: dict) -> PromptedModel:
    """The model of `config` with the weights it asks for (load_path, vit_weights, test_only)."""
    return create_model(Settings.from_config(config))


def _vilt_checkpoint(tmp_path, **overrides):
    """An official-layout ViLT pre-training checkpoint: backbone + pooler (+ the position_ids buffer official files
    carry) + mlm/itm heads."""
    torch.manual_seed(1)
    source = build(small_config(prompt_method="none", **overrides))
    sd = {k: v for k, v in source.official_state_dict().items() if k.startswith(BACKBONE)}
    sd["text_embeddings.position_ids"] = torch.arange(sd["text_embeddings.position_embeddings.weight"].shape[0])[None]
    sd["mlm_score.decoder.weight"] = torch.zeros(3, 3)
    sd["itm_score.fc.weight"] = torch.zeros(2, 32)
    path = os.path.join(tmp_path, "vilt.ckpt")
    torch.save({"state_dict": sd, "epoch": 9}, path)
    return path, sd


def test_official_vilt_checkpoint_loads_backbone_and_ignores_its_heads(tmp_path, caplog):
    path, sd = _vilt_checkpoint(tmp_path)
    config = small_config(load_path=path)  # outside: make_config sets the root logger's level (sacred)
    with caplog.at_level(logging.INFO):
        model = load(config)
    own = model.official_state_dict()
    for k, v in sd.items():
        if k in own:
            assert torch.equal(own[k], v), k
    assert "mlm_score.decoder.weight" not in own
    # the mlm/itm heads are reported (position_ids, a buffer positions no longer need, is not counted)
    assert "ignored 2 (['itm_score.fc.weight', 'mlm_score.decoder.weight']" in caplog.text


def test_text_positions_are_interpolated_when_the_text_length_differs(tmp_path):
    path, sd = _vilt_checkpoint(tmp_path, max_text_len=40)
    model = load(small_config(load_path=path, max_text_len=10))
    emb = model.backbone.text_embeddings
    table, new = sd["text_embeddings.position_embeddings.weight"], emb.position_embeddings.weight
    assert new.shape == (10, 32)
    for i in range(10):  # linear, src = (i + 0.5) * 40 / 10 - 0.5, clamped at 0
        src = max((i + 0.5) * 4 - 0.5, 0.0)
        lo = int(src)
        expected = table[lo] * (1 - (src - lo)) + table[min(lo + 1, 39)] * (src - lo)
        assert torch.allclose(new[i], expected, atol=1e-6)
    # text token i gets position i (was: the position_ids buffer is arange(10); there is no buffer now, and the
    # checkpoint's 40-long position_ids is not loaded)
    assert "text_embeddings.position_ids" not in model.state_dict()
    ids = torch.randint(1, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = emb.word_embeddings(ids) + new + emb.token_type_embeddings.weight[0]
        assert torch.allclose(emb.eval()(ids), emb.LayerNorm(x), atol=1e-6)


def test_missing_backbone_weight_is_an_error(tmp_path):
    path, sd = _vilt_checkpoint(tmp_path)
    del sd["transformer.blocks.1.attn.qkv.weight"]
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"vilt\.ckpt.*missing backbone weights.*blocks.1.attn.qkv.weight"):
        load(small_config(load_path=path))


def test_wrong_shape_is_an_error(tmp_path):
    path, _ = _vilt_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="shape mismatch"):
        load(small_config(load_path=path, hidden_size=64, num_heads=4))


def test_load_path_not_found_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="load_path="):
        load(small_config(load_path=str(tmp_path / "nope.ckpt")))


@pytest.mark.parametrize("name", ["corrupt.ckpt", "corrupt.safetensors"])
def test_corrupt_checkpoint_is_an_error_naming_the_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(ValueError, match=rf"load_path=.*{name}.*not a readable"):
        load(small_config(load_path=str(tmp_path / name)))


def test_empty_load_path_warns_about_random_init(caplog):
    config = small_config()
    with caplog.at_level(logging.WARNING):
        load(config)
    assert "randomly initialised" in caplog.text


def _hf_vilt(for_mlm: bool):
    from transformers import ViltForMaskedLM, ViltModel

    cfg = small_hf_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(2)
    return (ViltForMaskedLM if for_mlm else ViltModel)(cfg).eval()


def test_hf_vilt_keys_convert_to_the_official_layout():
    sd = convert_hf_vilt(_hf_vilt(for_mlm=True).state_dict())
    own = build(small_config(prompt_method="none")).official_state_dict()
    backbone = {k for k in own if k.startswith(BACKBONE)}
    assert backbone <= set(sd)
    assert {k for k in sd if k not in own and k not in IGNORED_ON_LOAD} == {k for k in sd if k.startswith("mlm_score.")}
    assert sd["transformer.blocks.0.attn.qkv.weight"].shape == (96, 32)


@pytest.mark.parametrize("layout", ["safetensors_folder", "bin_mlm"])
def test_hf_vilt_weights_give_the_hf_model_outputs(tmp_path, layout):
    from safetensors.torch import save_file

    hf = _hf_vilt(for_mlm=layout == "bin_mlm")
    if layout == "safetensors_folder":
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
        path = str(tmp_path)
    else:
        path = str(tmp_path / "pytorch_model.bin")
        torch.save(hf.state_dict(), path)
    c = small_config(prompt_method="none", load_path=path)
    model = load(c).double().eval()
    batch = make_batch(c, batch_size=2, image_hw=(64, 64))
    # full images: no zero padding (no normalised pixel sums to 0: it would be taken for padding)
    batch["image"][0][:] = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    batch["image_hw"] = torch.tensor([[64, 64], [64, 64]])
    pixels = (batch["image"][0].double() / 255 - 0.5) / 0.5  # the model's normalisation (PixelBERT mean and std)
    vilt = (hf.vilt if layout == "bin_mlm" else hf).double()
    with torch.no_grad():
        ours = model(batch, prune=False)
        theirs = vilt(input_ids=batch["text_ids"], attention_mask=batch["text_masks"], pixel_values=pixels)
    # HF uses one LayerNorm eps (1e-12) everywhere, the official ViT 1e-6: agreement to ~1e-6
    assert torch.allclose(ours["cls_feats"], theirs.pooler_output, atol=1e-4)
    T = batch["text_ids"].shape[1]
    assert torch.allclose(ours["text_feats"], theirs.last_hidden_state[:, :T], atol=1e-4)


def _finetuned(tmp_path, **overrides):
    """A fine-tuned checkpoint as training writes it (TaskModule.on_save_checkpoint: the official flat names);
    returns (path, the model saved)."""
    torch.manual_seed(3)
    module = TaskModule(small_config(**overrides))
    path = str(tmp_path / "finetuned.ckpt")
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": {"config": module.hparams.config}}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path, module.model


def test_finetuned_checkpoint_loads_fully_in_test_only(tmp_path):
    path, source = _finetuned(tmp_path)
    torch.manual_seed(4)
    model = load(small_config(load_path=path, test_only=True))
    assert set(model.state_dict()) == set(source.state_dict())
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_finetuned_checkpoint_of_another_task_is_an_error(tmp_path):
    path, _ = _finetuned(tmp_path)
    with pytest.raises(ValueError, match=r"food101_classifier.*mmimdb_classifier.*another task"):
        load(small_config(task="mmimdb", load_path=path, test_only=True))


def test_finetuned_checkpoint_of_another_prompt_method_is_an_error(tmp_path):
    path, _ = _finetuned(tmp_path, prompt_method="map")  # a MAP checkpoint into an MDPL model
    with pytest.raises(ValueError, match=r"finetuned\.ckpt.*prompt_method='map', not 'mdpl'"):
        load(small_config(load_path=path, test_only=True))
    path, _ = _finetuned(tmp_path)  # an MDPL checkpoint into a model without prompts
    with pytest.raises(ValueError, match=r"finetuned\.ckpt.*prompt_method='mdpl', not 'none'"):
        load(small_config(load_path=path, prompt_method="none", test_only=True))


def test_finetuned_checkpoint_with_foreign_prompt_parameters_is_an_error_naming_the_file(tmp_path):
    """An MDPL checkpoint that also holds MAP's complete_prompt (the old test's construction)."""
    path, _ = _finetuned(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["complete_prompt"] = torch.zeros(6, 16, 32)
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"finetuned\.ckpt.*'map'"):
        load(small_config(load_path=path, test_only=True))


def test_finetuned_checkpoint_with_missing_weights_is_an_error(tmp_path):
    path, source = _finetuned(tmp_path)
    sd = source.official_state_dict()
    del sd["gen_t_prompt_memory.1.prompt_keys"]
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ValueError, match="missing keys.*gen_t_prompt_memory.1.prompt_keys"):
        load(small_config(load_path=path, test_only=True))


def test_timm_vit_weights_load_and_timm_blocks_agree(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(5)
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=4, num_classes=7).eval()
    path = str(tmp_path / "vit.pth")
    torch.save(vit.state_dict(), path)
    model = load(small_config(vit_weights=path)).eval()
    for k, v in vit.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(model.backbone.transformer.state_dict()[k], v), k
    x = torch.randn(2, 9, 32)
    vit_ours = model.backbone.transformer
    with torch.no_grad():
        ours = vit_ours.norm(torch.nn.Sequential(*vit_ours.blocks)(x))
        assert torch.allclose(ours, vit.norm(vit.blocks(x)), atol=1e-5)


def test_interpolation_formula_is_bilinear_align_corners_false():
    """The reference formula above is what F.interpolate computes (guards the test itself)."""
    t = torch.randn(40, 4)
    out = F.interpolate(t[None, None], size=(7, 4), mode="bilinear", align_corners=False)[0, 0]
    src = max((3 + 0.5) * 40 / 7 - 0.5, 0.0)
    lo = int(src)
    assert torch.allclose(out[3], t[lo] * (1 - (src - lo)) + t[lo + 1] * (src - lo), atol=1e-6)
