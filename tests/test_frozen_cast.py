"""Frozen backbone matmul weights cast once to the autocast dtype (mdpl.modules.frozen_cast): bitwise the same
logits and gradients as autocast's per-op casts, fp32 masters in state dicts and checkpoints, load_state_dict
while cast, fp32 again after fit / test and after an exception, and nothing cast at precision 32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import mdpl.modules
from mdpl.modules import TaskModule
from mdpl.modules.frozen_cast import cast_frozen, frozen_cast, frozen_matmul_layers, is_cast, restore_frozen
from mdpl.reference import make_batch, small_config
from mdpl.train import main

pytestmark = pytest.mark.usefixtures("one_thread")

BF16 = torch.bfloat16


def _is_cast_name(name: str) -> bool:
    """The parameters the cast covers: the backbone ViT's Linear layers and its patch-embedding Conv2d (proj)."""
    return name.startswith("transformer.") and name.rsplit(".", 2)[-2] in ("qkv", "proj", "fc1", "fc2")


OPTIONS = {  # MDPL prompts, MAP attention prompts (prefix keys / values), no prompts; with dropout
    "mdpl": dict(drop_rate=0.1),
    "map": dict(prompt_method="map", prompt_type="attention", prompt_layers=[0, 2], drop_rate=0.1),
    "none": dict(prompt_method="none", drop_rate=0.1),
}


def _module(prompt_method: str = "mdpl") -> TaskModule:
    torch.manual_seed(0)
    return TaskModule(small_config(**OPTIONS[prompt_method]))


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _forward_backward(module: TaskModule, batch: dict, prune: bool) -> tuple[torch.Tensor, dict]:
    module.zero_grad(set_to_none=True)
    module.model.prune = prune
    torch.manual_seed(1)  # the same dropout masks in both runs
    with torch.autocast("cpu", dtype=BF16):
        out = module(batch)
    out["food101_loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
    return out["food101_logits"].detach().clone(), grads


def test_the_cast_covers_the_backbone_vit_matmuls_only():
    module = _module()
    layers = frozen_matmul_layers(module)
    names = {n for n, m in module.named_modules() if any(m is layer for layer in layers)}
    assert "transformer.patch_embed.proj" in names and "transformer.blocks.0.attn.qkv" in names
    assert all(n.startswith("transformer.") for n in names)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    with frozen_cast(module, BF16):
        assert is_cast(module)
        for name, p in module.named_parameters():
            assert p.dtype == (BF16 if _is_cast_name(name) else torch.float32), name
            assert (name in trainable) == p.requires_grad
    assert not is_cast(module)
    assert all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.parametrize("prompt_method", sorted(OPTIONS))
@pytest.mark.parametrize("train", [False, True])
def test_precast_forward_and_gradients_are_bitwise_autocast(prompt_method, train):
    module = _module(prompt_method).train(train)
    batch = make_batch(small_config())
    before = _clone_state(module)
    params = dict(module.named_parameters())
    for prune in (True, False):
        logits, grads = _forward_backward(module, batch, prune)
        with frozen_cast(module, BF16):
            cast_logits, cast_grads = _forward_backward(module, batch, prune)
            assert module.transformer.blocks[0].mlp.fc1.weight.dtype == BF16
        assert logits.dtype == cast_logits.dtype == BF16
        assert torch.equal(logits, cast_logits)
        assert grads.keys() == cast_grads.keys() and len(grads) > 0
        for name, grad in grads.items():
            assert cast_grads[name].dtype == torch.float32 and torch.equal(grad, cast_grads[name]), name
    assert all(p is params[n] for n, p in module.named_parameters())  # the same Parameter objects ...
    after = module.state_dict()  # ... with their fp32 values
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())


def test_state_dict_while_cast_holds_the_fp32_values():
    module = _module()
    before = _clone_state(module)
    cast_frozen(module, BF16)
    try:
        qkv = module.transformer.blocks[1].attn.qkv.weight
        assert qkv.dtype == BF16 and torch.equal(qkv, before["transformer.blocks.1.attn.qkv.weight"].to(BF16))
        for state in (
            module.state_dict(),
            module.model.state_dict(),
            module.transformer.state_dict(prefix="transformer."),
        ):
            for key, value in state.items():
                ref = before[key]
                assert value.dtype == ref.dtype and torch.equal(value, ref), key
        kept = module.state_dict(keep_vars=True)["transformer.blocks.0.mlp.fc2.weight"]
        assert isinstance(kept, nn.Parameter) and kept.dtype == torch.float32
    finally:
        restore_frozen(module)


def test_load_state_dict_while_cast_updates_the_masters_and_the_cast_weights():
    module = _module()
    new = {k: v + 1 if v.is_floating_point() else v for k, v in _clone_state(module).items()}
    with frozen_cast(module, BF16):
        module.load_state_dict(new)
        assert is_cast(module)
        fc1 = module.transformer.blocks[0].mlp.fc1.weight
        assert fc1.dtype == BF16 and torch.equal(fc1, new["transformer.blocks.0.mlp.fc1.weight"].to(BF16))
        state = module.state_dict()
        assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in new.items())
        with pytest.raises(RuntimeError, match="size mismatch"):  # errors as usual, the cast state kept
            module.load_state_dict({"transformer.blocks.0.mlp.fc1.weight": torch.zeros(3)}, strict=False)
        assert fc1.dtype == BF16 and torch.equal(fc1, new["transformer.blocks.0.mlp.fc1.weight"].to(BF16))
    state = module.state_dict()
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert all(torch.equal(state[k], v) for k, v in new.items())


def test_restored_after_an_exception_and_cast_is_idempotent():
    module = _module()
    before = _clone_state(module)
    with pytest.raises(ValueError), frozen_cast(module, BF16):
        cast_frozen(module, BF16)  # already cast: nothing changes
        cast_frozen(module, torch.float16)  # another dtype: from the fp32 masters, not from bf16
        assert module.transformer.blocks[0].attn.proj.weight.dtype == torch.float16
        assert torch.equal(
            module.transformer.blocks[0].attn.proj.weight, before["transformer.blocks.0.attn.proj.weight"].half()
        )
        raise ValueError
    assert not is_cast(module)
    state = module.state_dict()
    assert all(torch.equal(state[k], v) and state[k].dtype == v.dtype for k, v in before.items())
    assert not module.transformer.blocks[0].attn.qkv._state_dict_hooks  # the hooks are gone
    with frozen_cast(module, None):  # no autocast dtype: nothing cast
        assert not is_cast(module)


# ---- in Lightning runs


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_arrows) -> Path:
    return make_arrows(tmp_path_factory.mktemp("food101"), "food101")


@pytest.fixture
def spy(monkeypatch):
    """Records the built model and, at each training / test step, the dtypes of the backbone's cast candidates
    and of the trainable parameters."""
    seen: dict = {"models": [], "steps": [], "modules": []}
    create = mdpl.modules.create_model

    def create_model(settings):
        model = create(settings)
        seen["models"].append(model)
        seen["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return model

    def record(module: TaskModule) -> None:
        seen["modules"].append(module)
        dtypes = {n: p.dtype for n, p in module.named_parameters()}
        seen["steps"].append(
            (
                {dtypes[n] for n in dtypes if _is_cast_name(n)},
                {p.dtype for p in module.parameters() if p.requires_grad},
                module.transformer.blocks[0].norm1.weight.dtype,
            )
        )

    training_step, test_step = TaskModule.training_step, TaskModule.test_step

    def spy_training_step(self, batch, batch_idx):
        record(self)
        if seen.get("fail_at") == batch_idx:
            raise RuntimeError("stopped by the test")
        return training_step(self, batch, batch_idx)

    def spy_test_step(self, batch, batch_idx):
        record(self)
        return test_step(self, batch, batch_idx)

    monkeypatch.setattr(mdpl.modules, "create_model", create_model)
    monkeypatch.setattr(TaskModule, "training_step", spy_training_step)
    monkeypatch.setattr(TaskModule, "test_step", spy_test_step)
    return seen


def _backbone_fp32_and_initial(state: dict, initial: dict) -> None:
    backbone = [k for k in initial if k.startswith(("transformer.", "text_embeddings.", "token_type_embeddings."))]
    assert any(_is_cast_name(k) for k in backbone)
    for key in backbone:
        assert state[key].dtype == initial[key].dtype and torch.equal(state[key], initial[key]), key
    assert all(initial[k].dtype == torch.float32 for k in backbone if initial[k].is_floating_point())


@pytest.mark.parametrize("precision", ["bf16", 32])
def test_fit_casts_only_under_mixed_precision_and_checkpoints_the_fp32_backbone(
    precision, data, tmp_path, tiny_config, spy
):
    main(tiny_config("food101", data, tmp_path, precision=precision, max_epoch=1))
    [model] = spy["models"]
    cast_dtype = BF16 if precision == "bf16" else torch.float32
    assert spy["steps"] and all(step == ({cast_dtype}, {torch.float32}, torch.float32) for step in spy["steps"])
    # after the fit: fp32 again (the same Parameter objects), the frozen backbone unchanged
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not is_cast(spy["modules"][0])
    _backbone_fp32_and_initial(model.state_dict(), spy["initial"])
    [run] = (tmp_path / "result").iterdir()
    ckpt = run / "version_0" / "checkpoints" / "last.ckpt"
    _backbone_fp32_and_initial(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"], spy["initial"])

    spy["steps"].clear()
    spy["modules"].clear()
    main(tiny_config("food101", data, tmp_path / "test", precision=precision, test_only=True, load_path=str(ckpt)))
    assert spy["steps"] and all(step == ({cast_dtype}, {torch.float32}, torch.float32) for step in spy["steps"])
    module = spy["modules"][0]
    assert all(p.dtype == torch.float32 for p in module.parameters()) and not is_cast(module)
    _backbone_fp32_and_initial(module.state_dict(), spy["initial"])


def test_a_failed_fit_leaves_the_module_in_fp32(data, tmp_path, tiny_config, spy):
    spy["fail_at"] = 1
    with pytest.raises(RuntimeError, match="stopped by the test"):
        main(tiny_config("food101", data, tmp_path, precision="bf16", max_epoch=1))
    assert spy["steps"][0][0] == {BF16}
    [model] = spy["models"]
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not is_cast(spy["modules"][0])
    _backbone_fp32_and_initial(model.state_dict(), spy["initial"])
