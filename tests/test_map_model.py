"""MAP (prompt_method "map") and plain ViLT (prompt_method "none") against the slow, independent reference
written from docs/official-behaviour.md#map-baseline (tests/reference/vilt.py map_forward: per-sample loops,
prompts picked per sample by missing code, explicit softmax attention with the prefix keys/values spelt out,
float64). Compared on logits and on the gradients of every trainable parameter, on batches mixing the three
missing types.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import create_model
from mdpl.errors import ConfigError
from mdpl.model.model import PromptedModel, official_name
from mdpl.train.module import TaskModule
from mdpl.train.settings import Settings
from reference.common import make_batch, small_config
from reference.vilt import map_forward

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ("complete_prompt", "missing_text_prompt", "missing_img_prompt")


def map_config(**overrides) -> dict:
    """Tiny ViLT (D=32, 2 heads, 3 layers, 64-pixel images, 8 text tokens), MAP prompts at layers 0 and 2."""
    c = small_config(
        num_heads=2, num_layers=3, max_text_len=8, prompt_method="map", prompt_length=4, prompt_layers=[0, 2]
    )
    c.update(overrides)
    return c


def build(config: dict) -> PromptedModel:
    return PromptedModel(Settings.from_config(config).model)


def load(config: dict) -> PromptedModel:
    """With the weights `config` asks for (load_path with test_only: a fine-tuned checkpoint)."""
    return create_model(Settings.from_config(config))


def mixed_batch(config: dict, seed: int = 0) -> dict:
    batch = make_batch(config, batch_size=6, seed=seed)
    batch["missing_type"] = torch.tensor([2, 0, 1, 1, 2, 0])  # every type, not in code order
    return batch


# ---- fast vs reference


def _compare(config: dict, batch: dict, tol: float = 1e-6) -> None:
    torch.manual_seed(0)
    module = TaskModule(config).double().eval()  # eval: no dropout
    model = module.model
    with torch.no_grad():  # random prompts: the official init (zeros, one row of ones) hides mistakes
        for name in PROMPTS:
            if hasattr(model.prompts, name):
                getattr(model.prompts, name).normal_()
    out = module(batch)  # uint8 images: normalised by the model in float64
    out["food101_loss"].backward()

    # the reference reads the file (official) names; parameters are compared under them
    named = {official_name(n): q for n, q in model.named_parameters()}
    trainable = [n for n, q in named.items() if q.requires_grad]
    p = {k: v.detach().clone() for k, v in model.official_state_dict().items()}
    for n in trainable:
        p[n].requires_grad_(True)
    logits = map_forward(p, config, batch)["food101_logits"]
    assert (out["food101_logits"] - logits).abs().max() <= tol
    grads = torch.autograd.grad(F.cross_entropy(logits, out["food101_labels"]), [p[n] for n in trainable])
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


def _trainable(model: PromptedModel) -> set[str]:
    """The top-level file names of the trainable parameters."""
    return {official_name(n).split(".")[0] for n, q in model.named_parameters() if q.requires_grad}


def test_none_matches_reference_and_trains_only_pooler_and_head():
    c = map_config(prompt_method="none")
    model = build(c)
    assert _trainable(model) == {"pooler", "food101_classifier"}
    _compare(c, mixed_batch(c))


# ---- parameters


def test_prompt_parameters_follow_official_names_shapes_and_init():
    model = build(map_config(prompt_length=6, prompt_layers=[0, 1, 2]))
    assert _trainable(model) == {"pooler", "food101_classifier", *PROMPTS}
    for name, row in zip(PROMPTS, (0, 2, 1)):
        t = getattr(model.prompts, name)
        assert t.shape == (3, 6, 32)
        expected = torch.zeros(3, 6, 32)
        expected[:, row] = 1
        assert torch.equal(t.detach(), expected), name
    # prefix tuning also marks a row of the value half; a single prompt without multi_layer_prompt
    model = build(map_config(prompt_type="attention", prompt_length=6, multi_layer_prompt=False))
    for name, row in zip(PROMPTS, (0, 2, 1)):
        t = getattr(model.prompts, name).detach()
        assert t.shape == (1, 6, 32)
        assert t.sum(dim=(0, 2)).nonzero().flatten().tolist() == [row, 3 + row]
    # learnt_p=False freezes them; the rest of the model trains as usual
    model = build(map_config(learnt_p=False))
    assert not any(getattr(model.prompts, n).requires_grad for n in PROMPTS)
    assert model.backbone.pooler.dense.weight.requires_grad


def test_input_prompts_lead_the_sequence_and_cls_is_the_text_cls():
    """ "input" with L=4 at 2 layers: text_feats start after the 8 prompt tokens, and cls pools the text [CLS]."""
    c = map_config()
    model = build(c).eval()
    batch = mixed_batch(c)
    out = model(batch, prune=False)  # unpruned: with text_feats
    assert out["text_feats"].shape[1] == c["max_text_len"]
    assert torch.allclose(out["cls_feats"], model.backbone.pooler(out["text_feats"][:, 0]))
    model = build(map_config(prompt_type="attention")).eval()
    out = model(batch, prune=False)  # nothing inserted: token 0 is the text [CLS]
    assert torch.allclose(out["cls_feats"], model.backbone.pooler(out["text_feats"][:, 0]))


def test_prompts_are_picked_by_missing_type():
    """Changing one type's prompt changes exactly the samples of that type."""
    c = map_config()
    model = build(c).eval()
    batch = mixed_batch(c)
    before = model(batch)["food101_logits"]
    with torch.no_grad():
        model.prompts.missing_text_prompt.add_(torch.randn_like(model.prompts.missing_text_prompt))
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
    torch.save({"state_dict": model.official_state_dict()}, path)  # files hold the official names
    return str(path)


def test_map_checkpoint_round_trip_and_foreign_checkpoints_are_errors(tmp_path):
    c = map_config()
    torch.manual_seed(1)
    trained = build(c).eval()
    with torch.no_grad():
        trained.prompts.missing_img_prompt.normal_()
    path = _save(trained, tmp_path / "map.ckpt")
    loaded = load(dict(c, load_path=path, test_only=True)).eval()
    batch = mixed_batch(c)
    assert torch.equal(loaded(batch)["food101_logits"], trained(batch)["food101_logits"])

    with pytest.raises(ValueError, match="prompt_method='map', not 'mdpl'"):  # a MAP checkpoint into MDPL
        load(dict(c, prompt_method="mdpl", load_path=path, test_only=True))
    with pytest.raises(ValueError, match="prompt_method='map', not 'none'"):  # ... or into plain ViLT
        load(dict(c, prompt_method="none", load_path=path, test_only=True))
    mdpl = _save(build(dict(c, prompt_method="mdpl")), tmp_path / "mdpl.ckpt")
    with pytest.raises(ValueError, match="prompt_method='mdpl', not 'map'"):  # an MDPL checkpoint into MAP
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
