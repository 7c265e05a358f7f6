"""torch_compile=True: every transformer block runs through torch.compile (dynamic shapes); same results.

Compiling on two CPU cores takes about a minute, so the model test compiles once and every later run in
this process reuses its graphs (the blocks share them).
"""

from __future__ import annotations

import pytest
import torch

from mdpl.errors import ConfigError
from mdpl.model.model import PromptedModel, compile_model
from mdpl.train.run import main
from mdpl.train.settings import Settings
from reference.common import make_batch, small_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
# the tiny training config with small_config's heads and top-k: the Lightning runs reuse the graphs compiled
# by the first test (the compile is the slow part); dropout off, as compiled dropout draws other masks
SAME_GRAPHS = dict(num_heads=4, top_k=3, drop_rate=0.0)


def _pair(**options) -> tuple[PromptedModel, PromptedModel]:
    torch.manual_seed(0)
    settings = Settings.from_config(small_config("food101", **options))
    eager = PromptedModel(settings.model)
    compiled = PromptedModel(settings.model)
    compiled.load_state_dict(eager.state_dict())
    compile_model(compiled)
    return eager, compiled


def _compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


# MDPL, and MAP's attention prompts (the blocks' prefix key/value form)
@pytest.mark.parametrize("options", [{}, dict(prompt_method="map", prompt_type="attention", prompt_layers=[0, 1])])
def test_compiled_blocks_give_the_eager_logits_and_gradients(options):
    eager, compiled = _pair(**options)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # parameter names unchanged by compiling
    assert list(compiled.official_state_dict()) == list(eager.official_state_dict())  # checkpoints: official keys
    assert "transformer.blocks.0.attn.qkv.weight" in compiled.official_state_dict()
    before = _compiled_graphs()
    # three image sizes and text lengths: one dynamic graph per variant serves them all
    for seed, hw in [(0, (64, 96)), (1, (96, 64)), (2, (64, 64))]:
        batch = make_batch(small_config("food101"), batch_size=5, image_hw=hw, seed=seed)
        for model in (eager, compiled):
            out = model(batch)
            out["food101_logits"].square().sum().backward()
        torch.testing.assert_close(compiled(batch)["food101_logits"], eager(batch)["food101_logits"])
    assert _compiled_graphs() > before  # really compiled, not run eagerly
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        if p.requires_grad:
            error = (q.grad - p.grad).abs().max() / p.grad.abs().max()  # relative to the tensor's scale
            assert error < 1e-5, name
    eager.eval(), compiled.eval()
    with torch.inference_mode():
        torch.testing.assert_close(compiled(batch)["food101_logits"], eager(batch)["food101_logits"])
        unpruned = compiled(batch, prune=False)
        torch.testing.assert_close(unpruned["image_feats"], eager(batch, prune=False)["image_feats"])


def test_training_and_test_only_with_torch_compile_match_eager(tmp_path, make_arrows, tiny_config, read_metrics):
    """Lightning fit and test_only through compiled blocks: the same logged losses and test metrics as eager."""
    data = make_arrows(tmp_path / "data", "food101", samples=20)
    results = {}
    for flag in (False, True):
        out = tmp_path / f"compile_{flag}"
        main(tiny_config("food101", data, out, torch_compile=flag, max_epoch=1, **SAME_GRAPHS))
        [run] = (out / "result").iterdir()
        ckpt = run / "version_0" / "checkpoints" / "last.ckpt"
        evaluation = dict(test_only=True, load_path=str(ckpt))
        [test] = main(tiny_config("food101", data, out, torch_compile=flag, **evaluation, **SAME_GRAPHS))
        rows = read_metrics(run / "version_0")
        results[flag] = ([r["food101/train/loss"] for r in rows if r.get("food101/train/loss")], test)
    (train_eager, test_eager), (train_compiled, test_compiled) = results[False], results[True]
    assert train_eager and len(train_compiled) == len(train_eager)
    torch.testing.assert_close([float(x) for x in train_compiled], [float(x) for x in train_eager], rtol=1e-4, atol=0)
    assert test_compiled.keys() == test_eager.keys()
    for key in test_eager:
        assert test_compiled[key] == pytest.approx(test_eager[key], rel=1e-4), key


def test_torch_compile_must_be_a_boolean():
    with pytest.raises(ConfigError, match="torch_compile='yes'"):
        Settings.from_config(small_config("food101", torch_compile="yes"))
