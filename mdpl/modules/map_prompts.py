"""MAP baseline (missing-aware prompts, Lee et al. CVPR 2023) on the same frozen ViLT (REFERENCE §11).

Three prompt tensors, one per missing type, each (n, L, D) with n = len(prompt_layers) if
multi_layer_prompt else 1 (then the one prompt is used at every prompt layer). A sample's prompts are
picked by its missing_type code (0 complete, 1 text missing, 2 image missing).

- prompt_type "input": at each layer l in prompt_layers the prompt for l is prepended to the sequence
  before the block, so after the loop x = [P_last ... P_0, TEXT, IMAGE]; the prompts are always visible.
  cls comes from the text [CLS] at position n_inserted.
- prompt_type "attention" (prefix tuning): at layer l the block's keys get prompt[:, :L/2] and its
  values prompt[:, L/2:] (the whole prompt for both when learnt_p is False), unprojected, in front of the
  projected keys/values; nothing is inserted, so cls comes from position 0 (the text [CLS]).
"""

import torch
from torch import Tensor, nn

from mdpl.modules.prompts import check_missing_type, layer_list

# Official attribute names (MAP checkpoints load as they are), in missing_type code order.
PROMPT_NAMES = ("complete_prompt", "missing_text_prompt", "missing_img_prompt")
# The row set to 1 at init, per tensor (official: complete 0, text missing 2, image missing 1).
_INIT_ROWS = (0, 2, 1)


def check_map_config(config: dict) -> None:
    """Reject MAP settings the official code would crash on or silently misuse."""
    if config["prompt_type"] not in ("input", "attention"):
        raise ValueError(f'config prompt_type={config["prompt_type"]!r}: MAP expects "input" or "attention"')
    length, layers = config["prompt_length"], config["prompt_layers"]
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"config prompt_length={length!r}: expected a positive int")
    if config["prompt_type"] == "attention" and config["learnt_p"] and length % 2:
        # keys get the first half and values the second: both halves must have the same length
        raise ValueError(f'config prompt_length={length}: prompt_type "attention" with learnt_p needs an even length')
    if not layer_list(config, "prompt_layers"):
        raise ValueError(f"config prompt_layers={layers!r}: MAP needs at least one prompt layer")


def add_map_prompts(module: nn.Module, config: dict) -> None:
    """Register complete_prompt, missing_text_prompt, missing_img_prompt on `module` (official init)."""
    check_map_config(config)
    length, dim = config["prompt_length"], config["hidden_size"]
    n = len(config["prompt_layers"]) if config["multi_layer_prompt"] else 1
    prefix = config["prompt_type"] == "attention" and config["learnt_p"]
    for name, row in zip(PROMPT_NAMES, _INIT_ROWS):
        p = torch.zeros(n, length, dim)
        p[:, row : row + 1] = 1  # a slice, as the official code: a row past the end is simply not set
        if prefix:  # the value half gets its own marker row
            p[:, length // 2 + row : length // 2 + row + 1] = 1
        module.register_parameter(name, nn.Parameter(p, requires_grad=bool(config["learnt_p"])))


def select_prompts(module: nn.Module, missing_type: Tensor) -> Tensor:
    """(B,) missing_type codes -> (B, n, L, D) prompts, gathered in one indexing op."""
    check_missing_type(missing_type)
    bank = torch.stack([getattr(module, name) for name in PROMPT_NAMES])  # (3, n, L, D)
    return bank[missing_type.long()]


def run_blocks(blocks: nn.ModuleList, x: Tensor, mask: Tensor, config: dict, prompts: Tensor) -> tuple[Tensor, int]:
    """Run the ViT blocks over x = [TEXT, IMAGE] (B, N, D) with key mask (B, N) and prompts (B, n, L, D).

    Returns (x after the last block, before the final norm; number of tokens inserted in front).
    """
    x = x.detach()  # official: the embeddings are detached (frozen anyway; prompts still get gradients)
    layers = config["prompt_layers"]
    inserted = 0
    for i, blk in enumerate(blocks):
        if i not in layers:
            x = blk(x, mask)
            continue
        p = prompts[:, layers.index(i) if config["multi_layer_prompt"] else 0].to(x.dtype)  # (B, L, D)
        if config["prompt_type"] == "input":
            x = torch.cat([p, x], dim=1)
            mask = torch.cat([mask.new_ones(p.shape[:2]), mask], dim=1)
            inserted += p.shape[1]
            x = blk(x, mask)
        else:
            half = p.shape[1] // 2
            kv = (p[:, :half], p[:, half:]) if config["learnt_p"] else (p, p)
            x = blk(x, mask, prefix_kv=kv)
    return x, inserted
