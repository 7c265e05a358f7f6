"""MDPL, MAP and the prompt-free model on CLIP: each against its float64 reference (tests/reference/clip.py) on
logits and every trainable gradient, pruned and unpruned, on batches mixing the three missing types; their
trainable sets, and their trainable counts at the official geometry (their learning from each modality alone with
`tiny`: tests/test_tiny_recipe.py)."""

from __future__ import annotations

from itertools import takewhile

import pytest
import torch
import torch.nn.functional as F

from mdpl.config import make_config
from mdpl.model.model import PromptedModel, official_name
from mdpl.train.module import task_losses
from mdpl.train.settings import Settings
from reference.clip import reference_forward
from reference.common import make_batch, small_config

# method variants: the overrides of reference.common.SMALL on CLIP (3 layers per tower, prompts at layers 0, 1)
CASES = {
    "none": {"prompt_method": "none"},
    "map-input": {"prompt_method": "map"},
    "map-attention": {"prompt_method": "map", "prompt_type": "attention"},
    "map-attention-frozen": {
        "prompt_method": "map",
        "prompt_type": "attention",
        "learnt_p": False,
        "prompt_length": 3,
    },  # fmt: skip
    "map-unordered-layers": {"prompt_method": "map", "prompt_layers": [2, 0]},  # layer 2 reads tensor row 0
    "map-one-prompt": {"prompt_method": "map", "multi_layer_prompt": False, "prompt_layers": [0, 2]},
    "mdpl": {"prompt_method": "mdpl"},
    # every branch of the insertion rule behind earlier prompts: generative only after shared ones (layer 1 here),
    # shared only after generative ones (layer 1 below), both (layer 2)
    "mdpl-generative-after-shared": {
        "prompt_method": "mdpl",
        "gen_prompt_layers": [1, 2],
        "shared_prompt_layers": [0, 2],
    },
    "mdpl-shared-after-generative": {
        "prompt_method": "mdpl",
        "gen_prompt_layers": [0, 2],
        "shared_prompt_layers": [1, 2],
    },  # fmt: skip
}
# SMALL's towers are both 64 wide (one head each); a 128-wide vision tower has two heads and makes every
# width mistake (a text-width prompt on the image side, a bottleneck to the wrong width) fail
WIDTHS = {"equal-widths": {}, "wider-image-tower": {"clip_width": 128}}


# MAP's prompts of the missing tower: a sample without text has its text feature zeroed by the head, so the text
# tower's "text missing" prompts never reach a logit (nor the image tower's "image missing" ones): no gradient
NEVER_READ = {"missing_text_prompt_text", "missing_img_prompt_image"}


def clip_config(**overrides) -> dict:
    return small_config(**{"backbone": "clip", **overrides})


def build(config: dict) -> PromptedModel:
    return PromptedModel(Settings.from_config(config).model)


def perturb(model: PromptedModel) -> None:
    """Non-trivial values where the initialisation is special: LayerNorm weights of 1, biases and MAP prompts of 0
    (but one row of ones) would hide a mistake in how they enter."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("prompts.") and "prompt" in name.split(".")[1] and param.dim() == 3:
                param.normal_()  # MAP's prompt tensors (n x L x D)
            elif name.endswith("bias") or ".ln" in name or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)


def compare_with_reference(c: dict, prune: bool) -> None:
    torch.manual_seed(0)
    model = build(c).double().eval()
    perturb(model)
    model.prune = prune
    batch = make_batch(c, batch_size=6)
    batch["missing_type"] = torch.tensor([2, 0, 1, 1, 2, 0])  # every type, mixed
    out = task_losses(model.cfg.tasks, model(batch), batch["label"])
    out["food101_loss"].backward()

    trainable = {official_name(n): q for n, q in model.named_parameters() if q.requires_grad}
    p = {k: v.detach().clone() for k, v in model.official_state_dict().items()}
    for name in trainable:
        p[name].requires_grad_(True)
    logits = reference_forward(p, c, batch)["food101_logits"]
    torch.testing.assert_close(out["food101_logits"], logits, rtol=0, atol=1e-10)
    loss = F.cross_entropy(logits, batch["label"])
    grads = torch.autograd.grad(loss, [p[n] for n in trainable], allow_unused=True)
    for (name, param), expected in zip(trainable.items(), grads):
        if name in NEVER_READ:
            assert expected is None and (param.grad is None or not param.grad.any()), name
            continue
        scale = expected.abs().max().clamp(min=1e-30)
        assert (param.grad - expected).abs().max() <= 1e-8 * scale, name
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient"


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "unpruned"])
@pytest.mark.parametrize("width", list(WIDTHS))
@pytest.mark.parametrize("case", list(CASES))
def test_each_method_on_clip_matches_its_reference(case, width, prune):
    compare_with_reference(clip_config(**CASES[case], **WIDTHS[width]), prune)


def _trainable(model: PromptedModel) -> set[str]:
    """Trainable parameters by file name, cut before a layer index (gen_t_prompt_memory, visual.ln_post.bias)."""
    names = (official_name(n).split(".") for n, q in model.named_parameters() if q.requires_grad)
    return {".".join(takewhile(lambda part: not part.isdigit(), parts)) for parts in names}


TAIL = {"visual.ln_post.weight", "visual.ln_post.bias", "visual.proj", "text.ln_final.weight", "text.ln_final.bias",
        "food101_classifier.weight", "food101_classifier.bias"}  # fmt: skip


@pytest.mark.usefixtures("one_thread")
def test_trainable_sets_and_prompt_shapes_on_clip():
    """CLIP's trainable tail and head for every method; each method's prompts at each tower's width (text 64,
    image 128): MDPL's memories per tower, its shared prompts at the text width with bottlenecks to each tower;
    MAP's three tensors per tower."""
    c = clip_config(clip_width=128)
    assert _trainable(build({**c, "prompt_method": "none"})) == TAIL
    mdpl = build({**c, "prompt_method": "mdpl"})
    assert _trainable(mdpl) == TAIL | {"gen_t_prompt_memory", "gen_v_prompt_memory", "shared_missing_t",
                                       "shared_missing_v", "bottleneck_texts", "bottleneck_images"}  # fmt: skip
    sd = mdpl.official_state_dict()
    assert sd["gen_t_prompt_memory.1.prompt_memory"].shape == (6, 3, 64)  # mem_size x gen_prompt_length x width
    assert sd["gen_v_prompt_memory.1.prompt_keys"].shape == (6, 128)
    assert sd["shared_missing_v.1"].shape == (2, 64)  # the text width, on both sides
    assert sd["bottleneck_texts.0.2.weight"].shape == (64, 4) and sd["bottleneck_images.0.2.weight"].shape == (128, 4)
    map_ = build({**c, "prompt_method": "map"})
    names = {f"{kind}_{tower}" for kind in ("complete_prompt", "missing_text_prompt", "missing_img_prompt")
             for tower in ("text", "image")}  # fmt: skip
    assert _trainable(map_) == TAIL | names
    sd = map_.official_state_dict()
    assert sd["missing_img_prompt_text"].shape == (2, 6, 64) and sd["complete_prompt_image"].shape == (2, 6, 128)


# Trainable parameters at the official geometry (task_finetune_mmimdb: 23 genres, prompt sizes of the task config:
# lengths 16, layers [0..5], mem_size 16; ViLT-B/32 768 wide; CLIP ViT-B/16: vision 768, text 512, embedding 512).
# CLIP's tail: ln_post 2 x 768 + proj 768 x 512 + ln_final 2 x 512 = 395,776; its head Linear(1024, 23) = 23,575.
#   none@clip: 395,776 + 23,575                                                            =   419,351
#   map@clip:  + 3 tensors x 6 layers x 16 x (512 + 768) = 368,640                          =   787,991
#   mdpl@clip: + memories 6 x (16 x 16 x 768 + 16 x 768 + 16 x 16 x 512 + 16 x 512) = 2,088,960
#              + shared prompts 6 x 2 x 16 x 512 = 98,304
#              + bottlenecks 6 x [(512 x 32 + 32) + (32 x 512 + 512) + (512 x 32 + 32) + (32 x 768 + 768)] = 450,432
#                                                                                         = 3,057,047
#   dcp@clip:  5,839,127 (tests/test_clip.py)
# ViLT's: pooler 768 x 768 + 768 = 590,592; head Linear(768, 1536) + LayerNorm(1536) + Linear(1536, 23) = 1,219,607.
#   none: 1,810,199; map: + 3 x 6 x 16 x 768 = 221,184 -> 2,031,383; mdpl: 5,358,935 (tests/test_model_mdpl.py)
OFFICIAL_COUNTS = {("vilt", "none"): 1_810_199, ("vilt", "map"): 2_031_383, ("vilt", "mdpl"): 5_358_935,
                   ("clip", "none"): 419_351, ("clip", "map"): 787_991, ("clip", "mdpl"): 3_057_047,
                   ("clip", "dcp"): 5_839_127}  # fmt: skip


@pytest.mark.slow
def test_trainable_counts_at_the_official_geometry(capsys):
    counts = {}
    for backbone, method in OFFICIAL_COUNTS:
        named = "task_finetune_mmimdb_dcp" if method == "dcp" else "task_finetune_mmimdb"
        config = make_config(named, backbone=backbone, prompt_method=method, per_gpu_batchsize=8)
        with torch.device("meta"):  # shapes only: the full-size weights are never allocated
            model = PromptedModel(Settings.from_config(config).model)
        counts[backbone, method] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with capsys.disabled():
        print("\ntrainable parameters, MM-IMDb, official geometry:")
        for (backbone, method), n in counts.items():
            print(f"  {method}@{backbone}: {n:,}")
    assert counts == OFFICIAL_COUNTS
