"""CPU training-step throughput of PromptedViLT with exact pruning (the default) against the unpruned model.

    python benchmarks/prune_cpu.py [--steps 3] [--threads 2] [--batch 2]

Food-101 shapes: text length 512 with 16-24 real tokens, images 384 x 576, the full ViT-B/32 (hidden 768,
12 layers), MDPL with the default prompt layers [0..5] and the official memory query (masked_query=False),
random weights, train mode. A step is forward + loss + backward (no optimiser step, as the backbone is frozen
and that cost is the same in both). One untimed warm-up step per mode; the modes alternate per step so that
machine noise hits both alike. Prints samples/s per mode and the pruned / unpruned ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from mdpl.config import make_config
from mdpl.modules.model import PromptedViLT
from mdpl.modules.objectives import compute_task
from mdpl.settings import ModelConfig


def make_batch(batch: int, text_len: int = 512, image_hw: tuple[int, int] = (384, 576), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 25, (batch,), generator=g)
    masks = (torch.arange(text_len)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, masks.shape, generator=g) * masks
    return {
        "image": [torch.rand(batch, 3, *image_hw, generator=g) * 2 - 1],
        "text_ids": ids,
        "text_masks": masks,
        "label": torch.randint(0, 101, (batch,), generator=g),
        "missing_type": torch.arange(batch) % 3,
    }


def step(model: PromptedViLT, batch: dict, prune: bool) -> float:
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    out = model(batch, prune=prune)
    compute_task("food101", out["food101_logits"], batch["label"])["food101_loss"].backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig.from_config(make_config("task_finetune_food101"))
    torch.manual_seed(0)
    model = PromptedViLT(cfg).train()
    batch = make_batch(args.batch, cfg.max_text_len)
    print(
        f"hidden {cfg.hidden_size}, {cfg.num_layers} layers, gen layers {list(cfg.gen_prompt_layers)}, shared "
        f"{list(cfg.shared_prompt_layers)}, masked_query {cfg.masked_query}; batch {args.batch}, text "
        f"{cfg.max_text_len} (real {batch['text_masks'].sum(1).tolist()}), image "
        f"{tuple(batch['image'][0].shape[2:])}, {args.threads} threads",
        flush=True,
    )
    times = {True: [], False: []}
    for prune in (True, False):  # warm-up
        step(model, batch, prune)
    for _ in range(args.steps):
        for prune in (True, False):
            times[prune].append(step(model, batch, prune))
    rate = {}
    for prune in (False, True):
        t = sorted(times[prune])[len(times[prune]) // 2]  # median
        rate[prune] = args.batch / t
        name = "pruned" if prune else "unpruned"
        print(f"{name:9s} train step {t:7.3f} s (median of {args.steps}), {rate[prune]:.3f} samples/s", flush=True)
    print(f"ratio pruned / unpruned: {rate[True] / rate[False]:.2f}x")


if __name__ == "__main__":
    main()
