"""Frozen backbone matmul weights held in the autocast compute dtype while a mixed-precision run lasts.

Under fp16/bf16 autocast every `F.linear` / `conv2d` casts its fp32 weight and bias to the compute dtype;
autocast caches casts only of leaf tensors that require a gradient (and Lightning turns its cache off): the
frozen backbone's weights were re-cast at every step, in every layer. `cast_frozen` casts them once instead.
Autocast then sees weights already in its dtype and casts nothing; the values are exactly the ones it would
have produced (`fp32_tensor.to(dtype)`), so logits and trainable-parameter gradients are bitwise those of the
uncast module.

What is cast: the `nn.Linear` and `nn.Conv2d` modules under `module.transformer` whose parameters are all
frozen (the ViT blocks' qkv / proj / fc1 / fc2 and `patch_embed.proj`), weight and bias. Not LayerNorms (autocast
runs them in fp32), not embeddings (lookups are not autocast), nothing trainable.

While cast, each such layer keeps its original fp32 tensors (the same storage, not copies) and:
- `state_dict()` (of any module above it, hence Lightning's checkpoints) holds those fp32 tensors, so saved
  backbone weights are the original values bit for bit;
- `load_state_dict()` loads into the fp32 tensors (a pre-hook puts them back) and casts again after.
`restore_frozen` puts the fp32 tensors back into the same Parameter objects. `FrozenCastCallback` (which
`TaskModule.configure_callbacks` returns) casts for the duration of fit / validate / test / predict when the
trainer's precision is "16-mixed" or "bf16-mixed", and restores at their end and on any exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
import torch.nn as nn
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.trainer.states import TrainerFn

MIXED_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}  # Lightning's autocast dtypes
_MASTERS = "_mdpl_fp32_masters"  # on a cast layer: {parameter name: its original fp32 tensor}
_DTYPE = "_mdpl_cast_dtype"  # on a cast layer: the dtype its weights are cast to
_HANDLES = "_mdpl_fp32_hooks"  # on a cast layer: the state-dict hook handles, removed at restore
_RECAST = "_mdpl_recast_dtype"  # on a cast layer inside its load_state_dict: the dtype to cast to again


def frozen_matmul_layers(module: nn.Module) -> list[nn.Module]:
    """The nn.Linear / nn.Conv2d layers under module.transformer whose parameters are all frozen."""
    backbone = getattr(module, "transformer", None)
    if backbone is None:
        return []
    return [
        m
        for m in backbone.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and not any(p.requires_grad for p in m.parameters())
    ]


def _cast_layers(module: nn.Module) -> list[nn.Module]:
    backbone = getattr(module, "transformer", None)
    return [] if backbone is None else [m for m in backbone.modules() if _DTYPE in m.__dict__]


def is_cast(module: nn.Module) -> bool:
    """Whether module's frozen backbone layers are in the cast state."""
    return bool(_cast_layers(module))


def cast_frozen(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast the frozen backbone matmul weights (see the module docstring) to dtype, keeping the fp32 masters.
    Cast already to another dtype: restored first; to this one: nothing to do."""
    if any(m.__dict__[_DTYPE] != dtype for m in _cast_layers(module)):
        restore_frozen(module)
    for layer in frozen_matmul_layers(module):
        if _DTYPE in layer.__dict__:
            continue
        _cast_layer(layer, dtype)
        handles = [
            layer.register_state_dict_post_hook(_state_dict_hook),
            layer.register_load_state_dict_pre_hook(_load_pre_hook),
            layer.register_load_state_dict_post_hook(_load_post_hook),
        ]
        object.__setattr__(layer, _HANDLES, handles)


def restore_frozen(module: nn.Module) -> None:
    """Put the fp32 masters back into the (same) parameters and remove the hooks; a no-op when not cast."""
    for layer in _cast_layers(module):
        _restore_layer(layer)
        for handle in layer.__dict__.pop(_HANDLES, []):
            handle.remove()


@contextmanager
def frozen_cast(module: nn.Module, dtype: torch.dtype | None) -> Iterator[nn.Module]:
    """cast_frozen(module, dtype) inside the block, restore_frozen(module) after it (also on an exception);
    dtype None: nothing is cast."""
    if dtype is None:
        yield module
        return
    cast_frozen(module, dtype)
    try:
        yield module
    finally:
        restore_frozen(module)


def autocast_dtype(trainer: pl.Trainer) -> torch.dtype | None:
    """The compute dtype of the trainer's autocast: fp16 / bf16 for Lightning's "16-mixed" / "bf16-mixed"
    MixedPrecision plugin, None for any other precision (32, 64, "bf16-true", ... or another plugin)."""
    plugin = trainer.precision_plugin
    if not isinstance(plugin, MixedPrecision):
        return None
    return MIXED_DTYPES.get(str(plugin.precision))


def _cast_layer(layer: nn.Module, dtype: torch.dtype) -> None:
    masters = {}
    for name, param in layer.named_parameters(recurse=False):
        if param.dtype != torch.float32:  # only fp32 weights have a cast autocast would redo every step
            continue
        masters[name] = param.data
        param.data = param.data.to(dtype)  # what autocast computes: a plain cast of the fp32 value
    object.__setattr__(layer, _MASTERS, masters)
    object.__setattr__(layer, _DTYPE, dtype)


def _restore_layer(layer: nn.Module) -> torch.dtype:
    """Put layer's masters back; returns the dtype it was cast to."""
    for name, master in layer.__dict__.pop(_MASTERS).items():
        param = getattr(layer, name)
        param.data = master.to(param.device)  # a move only when the module moved while cast (e.g. teardown)
    return layer.__dict__.pop(_DTYPE)


def _state_dict_hook(layer: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Cast layer: its state-dict entries are the fp32 masters."""
    for name, master in layer.__dict__.get(_MASTERS, {}).items():
        key = prefix + name
        if key not in state_dict:
            continue
        value = master.to(getattr(layer, name).device).detach()
        if isinstance(state_dict[key], nn.Parameter):  # keep_vars=True
            value = nn.Parameter(value, requires_grad=False)
        state_dict[key] = value


def _load_pre_hook(layer: nn.Module, *args) -> None:
    """load_state_dict into a cast layer loads into the fp32 masters: they are put back first ..."""
    if _DTYPE in layer.__dict__:
        object.__setattr__(layer, _RECAST, _restore_layer(layer))


def _load_post_hook(layer: nn.Module, incompatible_keys) -> None:
    """... and the loaded values are cast again after."""
    dtype = layer.__dict__.pop(_RECAST, None)
    if dtype is not None:
        _cast_layer(layer, dtype)


class FrozenCastCallback(pl.Callback):
    """Casts the module's frozen backbone weights (cast_frozen) for the duration of fit, validate, test and
    predict under "16-mixed" / "bf16-mixed" precision; restores them (restore_frozen) at the end of each and on
    any exception, so outside these calls the module is fp32. Holds no state (nothing in checkpoints)."""

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dtype = autocast_dtype(trainer)
        if dtype is not None:
            cast_frozen(pl_module, dtype)

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restore_frozen(pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # inside a fit the module is cast already
            self._start(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._end(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._end(trainer, pl_module)
