"""Weight loading: official ViLT checkpoints, Hugging Face ViLT state dicts, timm ViT weights and fine-tuned
checkpoints, and the errors for checkpoints that do not fit."""

import logging
import os

import pytest
import torch
import torch.nn.functional as F

from mdpl.modules import PromptedViLT, TaskModule, create_model
from mdpl.modules.weights import convert_hf_vilt
from mdpl.reference import make_batch, small_config, small_hf_config
from mdpl.settings import Settings

pytestmark = pytest.mark.usefixtures("one_thread")

BACKBONE = ("text_embeddings.", "token_type_embeddings.", "transformer.", "pooler.")


def build(config: dict) -> PromptedViLT:
    """The model of `config`, without loading anything."""
    return PromptedViLT(Settings.from_config(config).model)


def load(config: dict) -> PromptedViLT:
    """The model of `config` with the weights it asks for (load_path, vit_weights, test_only)."""
    return create_model(Settings.from_config(config))


def _vilt_checkpoint(tmp_path, **overrides):
    """An official-layout ViLT pre-training checkpoint: backbone + pooler + mlm/itm heads."""
    torch.manual_seed(1)
    source = build(small_config(prompt_method="none", **overrides))
    sd = {k: v for k, v in source.state_dict().items() if k.startswith(BACKBONE)}
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
    own = model.state_dict()
    for k, v in sd.items():
        if k in own:
            assert torch.equal(own[k], v), k
    assert "mlm_score.decoder.weight" not in own
    assert "ignored: 2" in caplog.text  # the mlm/itm heads are reported


def test_text_positions_are_interpolated_when_the_text_length_differs(tmp_path):
    path, sd = _vilt_checkpoint(tmp_path, max_text_len=40)
    model = load(small_config(load_path=path, max_text_len=10))
    table, new = sd["text_embeddings.position_embeddings.weight"], model.text_embeddings.position_embeddings.weight
    assert new.shape == (10, 32)
    for i in range(10):  # linear, src = (i + 0.5) * 40 / 10 - 0.5, clamped at 0
        src = max((i + 0.5) * 4 - 0.5, 0.0)
        lo = int(src)
        expected = table[lo] * (1 - (src - lo)) + table[min(lo + 1, 39)] * (src - lo)
        assert torch.allclose(new[i], expected, atol=1e-6)
    assert model.text_embeddings.position_ids.tolist() == [list(range(10))]


def test_missing_backbone_weight_is_an_error(tmp_path):
    path, sd = _vilt_checkpoint(tmp_path)
    del sd["transformer.blocks.1.attn.qkv.weight"]
    torch.save({"state_dict": sd}, path)
    with pytest.raises(KeyError, match="missing backbone weights.*blocks.1.attn.qkv.weight"):
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
    own = build(small_config(prompt_method="none")).state_dict()
    backbone = {k for k in own if k.startswith(BACKBONE)} - {"text_embeddings.position_ids"}
    assert backbone <= set(sd)
    assert {k for k in sd if k not in own} == {k for k in sd if k.startswith("mlm_score.")}
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
    batch["image"][0][:] = torch.rand(2, 3, 64, 64) * 2 - 1  # full images: no zero padding
    vilt = (hf.vilt if layout == "bin_mlm" else hf).double()
    with torch.no_grad():
        ours = model(dict(batch, image=[batch["image"][0].double()]), prune=False)
        theirs = vilt(
            input_ids=batch["text_ids"], attention_mask=batch["text_masks"], pixel_values=batch["image"][0].double()
        )
    # HF uses one LayerNorm eps (1e-12) everywhere, the official ViT 1e-6: agreement to ~1e-6
    assert torch.allclose(ours["cls_feats"], theirs.pooler_output, atol=1e-4)
    T = batch["text_ids"].shape[1]
    assert torch.allclose(ours["text_feats"], theirs.last_hidden_state[:, :T], atol=1e-4)


def _finetuned(tmp_path, **overrides):
    torch.manual_seed(3)
    model = TaskModule(small_config(**overrides))
    path = str(tmp_path / "finetuned.ckpt")
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"config": model.hparams.config}}, path)
    return path, model


def test_finetuned_checkpoint_loads_fully_in_test_only(tmp_path):
    path, source = _finetuned(tmp_path)
    torch.manual_seed(4)
    model = load(small_config(load_path=path, test_only=True))
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_finetuned_checkpoint_of_another_task_is_an_error(tmp_path):
    path, _ = _finetuned(tmp_path)
    with pytest.raises(ValueError, match=r"food101_classifier.*mmimdb_classifier.*another task"):
        load(small_config(task="mmimdb", load_path=path, test_only=True))


def test_finetuned_checkpoint_of_another_prompt_method_is_an_error(tmp_path):
    path, source = _finetuned(tmp_path)
    sd = source.state_dict()
    sd["complete_prompt"] = torch.zeros(6, 16, 32)
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ValueError, match=r"\['MAP'\] prompt parameters"):
        load(small_config(load_path=path, test_only=True))
    path, _ = _finetuned(tmp_path)  # an MDPL checkpoint into a model without prompts
    with pytest.raises(ValueError, match=r"\['MDPL'\] prompt parameters"):
        load(small_config(load_path=path, prompt_method="none", test_only=True))


def test_finetuned_checkpoint_with_missing_weights_is_an_error(tmp_path):
    path, source = _finetuned(tmp_path)
    sd = source.state_dict()
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
            assert torch.equal(model.transformer.state_dict()[k], v), k
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        ours = model.transformer.norm(torch.nn.Sequential(*model.transformer.blocks)(x))
        assert torch.allclose(ours, vit.norm(vit.blocks(x)), atol=1e-5)


def test_interpolation_formula_is_bilinear_align_corners_false():
    """The reference formula above is what F.interpolate computes (guards the test itself)."""
    t = torch.randn(40, 4)
    out = F.interpolate(t[None, None], size=(7, 4), mode="bilinear", align_corners=False)[0, 0]
    src = max((3 + 0.5) * 40 / 7 - 0.5, 0.0)
    lo = int(src)
    assert torch.allclose(out[3], t[lo] * (1 - (src - lo)) + t[lo + 1] * (src - lo), atol=1e-6)
