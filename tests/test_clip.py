"""The CLIP backbone and DCP: the towers against open_clip's own forward, every weight layout into one identical
model, the tokenizer and transform as DCP uses them, DCP against its float64 reference (logits and every
trainable gradient), its official trainable count, and its official defects behind their switches."""

from __future__ import annotations

import io
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from mdpl.data.tokenizers import TextTokenizer
from mdpl.data.transforms import CLIP_MEAN_STD, ClipTransform, normalize_images
from mdpl.errors import CheckpointError, ConfigError
from mdpl.model import weights
from mdpl.model.model import PromptedModel, official_name
from mdpl.train.module import task_losses
from mdpl.train.settings import Settings
from reference.common import make_batch, small_config
from reference.dcp import reference_forward

pytestmark = pytest.mark.usefixtures("one_thread")
open_clip = pytest.importorskip("open_clip")


def clip_config(**overrides) -> dict:
    return small_config(**{"backbone": "clip", "prompt_method": "dcp", **overrides})


def build(config: dict) -> PromptedModel:
    return PromptedModel(Settings.from_config(config).model)


def openai_clip(c: dict):
    """open_clip's CLIP (OpenAI's layout and forward) of the small config's shape, random weights."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=c["clip_layers"], width=c["clip_width"], patch_size=c["clip_patch_size"],
                           image_size=c["clip_image_size"], head_width=64)  # fmt: skip
    width = c["clip_text_width"]
    text = CLIPTextCfg(context_length=c["clip_context_length"], vocab_size=c["clip_vocab_size"], width=width,
                       heads=width // 64, layers=c["clip_text_layers"])  # fmt: skip
    torch.manual_seed(3)
    model = CLIP(embed_dim=c["clip_embed_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=True).double().eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in model.named_parameters():
            if name.endswith(
                ("bias", "ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")
            ):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_from_openai(sd: dict) -> dict:
    """OpenAI CLIP names -> Hugging Face CLIPModel names, written out here (q, k, v split, projections transposed)."""
    out = {}
    for key, v in sd.items():
        if key in ("logit_scale",):
            out[key] = v
            continue
        tower, key = ("vision_model", key[len("visual.") :]) if key.startswith("visual.") else ("text_model", key)
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", key)
        if m:
            pre = f"{tower}.encoder.layers.{m.group(1)}."
            rest = m.group(2)
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for part, chunk in zip("qkv", v.chunk(3)):
                    out[f"{pre}self_attn.{part}_proj.{kind}"] = chunk
                continue
            renames = (("attn.out_proj.", "self_attn.out_proj."), ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."),
                       ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))  # fmt: skip
            for a, b in renames:
                rest = rest.replace(a, b)
            out[pre + rest] = v
            continue
        names = {
            "class_embedding": "vision_model.embeddings.class_embedding",
            "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "positional_embedding": f"{tower}.embeddings.position_embedding.weight",
            "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
            "ln_post.weight": "vision_model.post_layernorm.weight",
            "ln_post.bias": "vision_model.post_layernorm.bias",
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "ln_final.weight": "text_model.final_layer_norm.weight",
            "ln_final.bias": "text_model.final_layer_norm.bias",
        }  # fmt: skip
        if key == "proj":
            out["visual_projection.weight"] = v.t()
        elif key == "text_projection":
            out["text_projection.weight"] = v.t()
        else:
            out[names[key]] = v
    return out


def _features(model: PromptedModel, batch: dict) -> torch.Tensor:
    return model(batch)["cls_feats"]


def complete_batch(c: dict) -> dict:
    return {**make_batch(c, batch_size=3), "missing_type": torch.zeros(3, dtype=torch.long)}


# ---- the backbone and its weights


def test_the_towers_give_open_clips_features():
    c = clip_config(prompt_method="none")
    reference = openai_clip(c)
    model = build(c).double().eval()
    weights.load_pretrained(model, reference.state_dict(), "open_clip")
    batch = complete_batch(c)
    images = normalize_images(batch["image"][0], batch["image_hw"], CLIP_MEAN_STD, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.cat([reference.encode_image(images), reference.encode_text(batch["text_ids"])], dim=1)
        torch.testing.assert_close(_features(model, batch), expected, rtol=0, atol=1e-10)


def test_every_weight_layout_loads_strictly_into_one_identical_model(tmp_path):
    c = clip_config(prompt_method="none")
    openai = {k: v.float() for k, v in openai_clip(c).state_dict().items()}
    # a TorchScript archive (how OpenAI ships ViT-B-16.pt) holding the same tensors under the same names
    holder = torch.nn.Module()
    for key, value in openai.items():
        *path, name = key.split(".")
        module = holder
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_parameter(name, torch.nn.Parameter(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(holder), tmp_path / "ViT-B-16.pt")
    torch.save(hf_from_openai(openai), tmp_path / "hf.bin")
    dcp = {("model.image_encoder." + k[7:] if k.startswith("visual.") else f"model.text_encoder.{k}"): v
           for k, v in openai.items() if k != "logit_scale"}  # fmt: skip
    torch.save({"state_dict": {**dcp, "model.logit_scale": openai["logit_scale"]}}, tmp_path / "dcp.ckpt")

    loaded = []
    for name in ("ViT-B-16.pt", "hf.bin", "dcp.ckpt"):
        sd, _ = weights.read_checkpoint(str(tmp_path / name))
        model = build(c)
        weights.load_pretrained(model, sd, name)
        loaded.append(model.official_state_dict())
    model = build(c)
    weights.load_pretrained(model, openai, "plain state dict")
    backbone = {k: v for k, v in model.official_state_dict().items() if k.startswith(("visual.", "text."))}
    assert len(backbone) == len(openai) - 1  # every tensor but logit_scale
    for other in loaded:
        assert other.keys() == model.official_state_dict().keys()
        for key, value in backbone.items():
            assert torch.equal(other[key], value), key
    assert torch.equal(model.official_state_dict()["visual.proj"], openai["visual.proj"])


def test_hugging_face_clip_weights_give_its_features():
    transformers = pytest.importorskip("transformers")
    c = clip_config(prompt_method="none")
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=c["clip_vocab_size"], hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=1, max_position_embeddings=10, eos_token_id=c["clip_vocab_size"] - 1),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=1,
                           image_size=32, patch_size=16), projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(4)
    hf = transformers.CLIPModel(config).double().eval()
    model = build(c).double().eval()
    weights.load_pretrained(model, hf.state_dict(), "hf")
    batch = complete_batch(c)
    images = normalize_images(batch["image"][0], batch["image_hw"], CLIP_MEAN_STD, dtype=torch.float64)
    with torch.no_grad():
        image = hf.get_image_features(pixel_values=images)
        text = hf.get_text_features(input_ids=batch["text_ids"], attention_mask=batch["text_masks"])
        image, text = (getattr(t, "pooler_output", t) for t in (image, text))
        torch.testing.assert_close(_features(model, batch), torch.cat([image, text], dim=1), rtol=0, atol=1e-10)


def test_a_checkpoint_of_the_other_backbone_or_of_no_known_layout_is_refused():
    vilt = PromptedModel(Settings.from_config(small_config()).model).official_state_dict()
    with pytest.raises(
        CheckpointError, match=r"vilt\.ckpt holds ViLT \(official names\) weights, but config backbone='clip'"
    ):
        weights.load_pretrained(build(clip_config()), vilt, "vilt.ckpt")
    clip = build(clip_config(prompt_method="none")).official_state_dict()
    with pytest.raises(
        CheckpointError, match=r"clip\.pt holds CLIP \(mdpl names\) weights, but config backbone='vilt'"
    ):
        weights.load_finetuned(PromptedModel(Settings.from_config(small_config()).model), clip, "clip.pt")
    with pytest.raises(CheckpointError, match=r"odd\.pt holds no weights layout mdpl knows"):
        weights.load_pretrained(build(clip_config()), {"encoder.w": torch.zeros(1)}, "odd.pt")
    missing = {k: v for k, v in clip.items() if "ln_final" not in k}
    with pytest.raises(CheckpointError, match=r"missing backbone weights \['text\.ln_final\.weight'"):
        weights.load_pretrained(build(clip_config()), missing, "part.pt")


# ---- tokenizer and transform


def test_the_tokenizer_is_openais_bpe_as_dcp_uses_it():
    tok = TextTokenizer("clip", 77)
    ids, mask = tok(["", "A photo &amp; a cat", "a photo & a cat", "&amp;amp; x", "Café naïve", "word " * 100])
    assert ids.shape == (6, 77) and ids.dtype == torch.long
    assert ids[0, :3].tolist() == [49406, 49407, 0] and mask[0].sum() == 2  # start, end, then zeros
    assert torch.equal(ids[1], ids[2])  # HTML unescaped, lower-cased
    assert torch.equal(ids[3][ids[3] > 0], tok(["& x"])[0][0][tok(["& x"])[0][0] > 0])  # unescaped twice
    decoded = open_clip.tokenizer.SimpleTokenizer().decode(ids[4][1 : int(mask[4].sum()) - 1].tolist())
    assert decoded.strip() == "café naïve"
    assert ids[5, -1] == 49407 and (ids[5] > 0).all() and mask[5].all()  # truncated, ending in end-of-text
    assert (mask.sum(1) - 1).tolist() == ids.argmax(1).tolist()  # the mask runs up to end-of-text


@pytest.mark.parametrize("size", [(300, 200), (224, 224), (200, 500), (223, 1000)])
def test_the_clip_transform_is_torchvisions(size):
    img = Image.effect_mandelbrot(size, (-2, -1.5, 1, 1.5), 50).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    img = Image.open(buf).convert("RGB")
    ours = ClipTransform(224)(img)
    reference = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(*CLIP_MEAN_STD)])(img)  # fmt: skip
    normalized = normalize_images(ours[None].contiguous(), torch.tensor([[224, 224]]), CLIP_MEAN_STD)[0]
    assert torch.equal(normalized, reference)


# ---- DCP against its reference


def _compare(c: dict, batch: dict, prune: bool) -> None:
    torch.manual_seed(0)
    model = build(c).double().eval()
    model.prune = prune
    out = task_losses(model.cfg.tasks, model(batch), batch["label"])
    out["food101_loss"].backward()
    trainable = {official_name(n): q for n, q in model.named_parameters() if q.requires_grad}
    p = {k: v.detach().clone() for k, v in model.official_state_dict().items()}
    p.update({k: v.detach().clone() for k, v in model.prompts.named_buffers()})
    for name in trainable:
        p[name].requires_grad_(True)
    logits = reference_forward(p, c, batch)["food101_logits"]
    torch.testing.assert_close(out["food101_logits"], logits, rtol=0, atol=1e-10)
    grads = torch.autograd.grad(F.cross_entropy(logits, batch["label"]), [p[n] for n in trainable])
    for (name, param), expected in zip(trainable.items(), grads):
        scale = expected.abs().max().clamp(min=1e-30)
        assert (param.grad - expected).abs().max() <= 1e-8 * scale, name
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient"


@pytest.mark.parametrize("prune", [True, False])
@pytest.mark.parametrize("overrides", [{}, {"dcp_masked_prompt_attention": True}, {"prompt_layers": [0, 1, 2]}])
def test_dcp_matches_its_reference(overrides, prune):
    c = clip_config(**overrides)
    batch = make_batch(c, batch_size=6)
    batch["missing_type"] = torch.tensor([2, 0, 1, 1, 2, 0])  # every type, mixed
    _compare(c, batch, prune)


def test_dcp_parameters_and_the_trainable_set():
    model = build(clip_config())
    trainable = {official_name(n) for n, q in model.named_parameters() if q.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {
        "visual_prompt_complete", "visual_prompt_missing", "text_prompt_complete", "text_prompt_missing",
        "common_prompt_complete", "common_prompt_image", "common_prompt_text", "compound_prompt_projections_text",
        "layernorm_text", "compound_prompt_projections_image", "layernorm_image", "common_prompt_projection_image",
        "common_prompt_projection_text", "attn_prompt_text", "attn_prompt_image", "visual", "text",
        "food101_classifier",
    }  # fmt: skip
    assert {n for n in trainable if n.startswith(("visual.", "text."))} == {
        "visual.ln_post.weight",
        "visual.ln_post.bias",
        "visual.proj",
        "text.ln_final.weight",
        "text.ln_final.bias",
    }
    layers = model.prompts.compound_prompt_projections_text
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(layers[0].modules(), layers[1].modules())
               if isinstance(a, torch.nn.Linear))  # fmt: skip


@pytest.mark.slow  # builds the real-size model (150M parameters)
def test_official_geometry_trains_dcps_5839127_parameters(capsys):
    from mdpl.config import make_config

    config = make_config("task_finetune_mmimdb_dcp", per_gpu_batchsize=8)
    model = PromptedModel(Settings.from_config(config).model)
    counts = {"all": sum(p.numel() for p in model.parameters()),
              "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}  # fmt: skip
    with capsys.disabled():
        print(f"\nDCP on CLIP ViT-B/16, MM-IMDb: {counts['trainable']:,} trainable of {counts['all']:,} parameters")
    assert counts["trainable"] == 5_839_127
    assert counts["all"] == 155_064_088 - 1  # the official count includes CLIP's unused logit_scale


# ---- DCP's official defects, each behind a switch


def test_dynamic_prompts_are_redrawn_at_each_build_and_never_saved_officially():
    c = clip_config()
    torch.manual_seed(5)
    first = build(c)
    assert not any("prompts_dynamic" in k for k in first.official_state_dict())  # a checkpoint cannot hold them
    torch.manual_seed(5)
    again = build(c)  # the same seed and the same RNG use before the draw: the same values (how test-only gets them)
    torch.manual_seed(6)
    other = build(c)
    for name, value in first.prompts.named_buffers():
        assert torch.equal(value, dict(again.prompts.named_buffers())[name])
        assert not torch.equal(value, dict(other.prompts.named_buffers())[name])
    saved = build(clip_config(dcp_dynamic_prompts="saved"))  # the fix: kept in the state dict
    assert {k for k in saved.official_state_dict() if "prompts_dynamic" in k} == {
        f"prompts_dynamic_{kind}_{side}" for kind in ("complete", "image", "text") for side in ("image", "text")
    }


def test_dcp_keys_need_dcp_and_dcp_needs_clip():
    with pytest.raises(ConfigError, match=r"prompt_method='dcp' does not go with backbone='vilt'"):
        Settings.from_config(small_config(prompt_method="dcp", prompt_length=6))
    with pytest.raises(ConfigError, match=r"dcp_masked_prompt_attention=True does not go with prompt_method='mdpl'"):
        Settings.from_config(small_config(dcp_masked_prompt_attention=True))
    with pytest.raises(ConfigError, match=r"prompt_length=4.*multiple of 3"):
        Settings.from_config(clip_config(prompt_length=4))
    with pytest.raises(ConfigError, match=r"prompt_layers=\[1, 2\].*\[0, 1, \.\.\., depth - 1\]"):
        Settings.from_config(clip_config(prompt_layers=[1, 2]))


# ---- through run.py


def test_a_dcp_run_and_an_mdpl_run_sweep_into_one_table_and_plot(tmp_path, make_arrows, tiny_updates, capsys):
    from mdpl.cli import cli

    data = make_arrows(tmp_path / "data", "food101")
    tables = str(tmp_path / "tables") + "/"
    common = [f"data_root={str(data)!r}", f"log_dir={str(tmp_path / 'result')!r}", "max_epoch=1",
              f"missing_table_root={tables!r}", "food101_class_num=4", "num_workers=0"]  # fmt: skip
    small = ["clip_width=64", "clip_text_width=64", "clip_image_size=32", "clip_embed_dim=16", "hidden_size=64"]
    assert cli(["run.py", "with", "task_finetune_food101_dcp", "tiny", *common, *small]) == 0
    out = capsys.readouterr().out
    assert "run folder:" in out and "dcp_finetune_food101_seed0_from_" in out and "best checkpoint:" in out
    assert cli(["run.py", "with", "task_finetune_food101", "tiny", *common, *small]) == 0
    capsys.readouterr()
    [dcp] = (tmp_path / "result").glob("dcp_*/version_0/checkpoints/last.ckpt")
    [mdpl] = (tmp_path / "result").glob("mdpl_*/version_0/checkpoints/last.ckpt")
    sweep = [f"sweep_paths={[str(dcp), str(mdpl)]!r}", "sweep_types=['both']", "sweep_ratios=[0.0, 1.0]"]
    assert cli(["run.py", "sweep", "with", "task_finetune_food101", "tiny", *common, *sweep]) == 0
    [folder] = (tmp_path / "result").glob("*_sweep/version_0")
    table = (folder / "sweep.md").read_text()
    assert "dcp@clip/both" in table and "mdpl/both" in table
    assert (folder / "sweep.png").stat().st_size > 0
