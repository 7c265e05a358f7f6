"""The fast model against the slow, independent reference (tests/reference/vilt.py): logits and the
gradients of every trainable parameter, on a batch mixing the three missing types."""

import pytest
import torch

from mdpl.model.model import official_name
from mdpl.train.module import TaskModule
from reference.common import base_config, make_batch, small_config
from reference.vilt import reference_forward

pytestmark = pytest.mark.usefixtures("one_thread")


def _compare(config: dict, batch: dict, dtype: torch.dtype, tol: float, task: str = "food101") -> None:
    torch.manual_seed(0)
    module = TaskModule(config).to(dtype).eval()  # eval: no dropout
    out = module(batch)  # uint8 images: normalised by the model in its dtype
    out[f"{task}_loss"].backward()

    # the reference reads the file (official) names, in float64 (its images are float64); parameters are compared
    # under those names
    params = {k: v.detach().to(torch.float64, copy=True) for k, v in module.model.official_state_dict().items()}
    named = {official_name(n): p for n, p in module.model.named_parameters()}
    trainable = [n for n, p in named.items() if p.requires_grad]
    for n in trainable:
        params[n].requires_grad_(True)
    ref = reference_forward(params, config, batch)
    logits = ref[f"{task}_logits"]
    assert (out[f"{task}_logits"] - logits).abs().max() <= tol
    loss = (
        torch.nn.functional.binary_cross_entropy_with_logits(logits, out[f"{task}_labels"].to(logits.dtype))
        if task == "mmimdb"
        else torch.nn.functional.cross_entropy(logits, out[f"{task}_labels"])
    )
    grads = torch.autograd.grad(loss, [params[n] for n in trainable])
    for n, g in zip(trainable, grads):
        diff = (named[n].grad - g).abs().max()
        assert diff <= tol, f"{n}: gradient differs by {diff}"
    # and the gradients are not trivially zero
    assert all(named[n].grad.abs().sum() > 0 for n in trainable if "prompt" in n or "shared" in n)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_small_model_matches_reference(dtype, tol):
    c = small_config()
    _compare(c, make_batch(c, batch_size=4), dtype, tol)


@pytest.mark.parametrize("gen,shared", [([1, 3], [0, 1]), ([2], []), ([], [3, 0])])
def test_any_prompt_layer_lists_match_reference(gen, shared):
    """Gen-only and shared-only layers, non-contiguous and unordered lists (official: only [0..n-1])."""
    c = small_config(gen_prompt_layers=gen, shared_prompt_layers=shared)
    _compare(c, make_batch(c, batch_size=3, seed=1), torch.float64, 1e-6)


def test_mmimdb_masked_query_matches_reference():
    c = small_config(task="mmimdb", masked_query=True)
    _compare(c, make_batch(c, batch_size=3, task="mmimdb"), torch.float64, 1e-6, task="mmimdb")


@pytest.mark.slow
def test_full_vit_b32_matches_reference():
    """The real ViT-B/32-384 geometry and all default prompt layers, batch 2, short text, small images."""
    c = base_config("food101", drop_rate=0.0, patch_order="fixed", max_text_len=6)
    batch = make_batch(c, batch_size=3, image_hw=(64, 96))
    _compare(c, batch, torch.float32, 1e-4)
