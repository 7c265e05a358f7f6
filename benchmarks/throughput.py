"""Train-step and eval throughput of a PromptedModel, against the slow references (tests/reference).

    python benchmarks/throughput.py            # CUDA: full shapes under fp16 autocast; CPU: full shapes in fp32
    python benchmarks/throughput.py --quick    # CPU run: Food-101, batch 2, 1 warm-up + 2 timed steps per phase
    python benchmarks/throughput.py --quick --modes pruned,pruned:dcp@clip   # MDPL on ViLT beside DCP on CLIP

Shapes: Food-101 text 512, images 384 x 576, batch 32; MM-IMDb text 1024, images 576 x 384, batch 16;
texts have realistic real lengths (Food-101 titles 16-24 tokens, MM-IMDb plots 100-400), missing types
0/1/2 mixed; on CLIP, 224 x 224 images and 77 tokens. Modes: "pruned" (the default model: official math,
rows nothing reads are not computed), "unpruned" (official math computed in full: the baseline), "pruned+trim"
(masked_query + trim_text: the text is cut to the batch's longest real text), "reference" (per-sample loops,
explicit attention; dropout off); "+compile" after a mode runs its transformer blocks and prompt memories
through torch.compile (config torch_compile; the compile happens in the warm-up steps). ":METHOD@BACKBONE" at
the end picks another prompt method and backbone than MDPL on ViLT, e.g. "pruned:dcp@clip", "pruned:map",
"reference:mdpl@clip" (FLOPs and MFU are counted for MDPL on ViLT only).
The official code's figures on one H200 (fp16, batch 32 Food-101 / 16 MM-IMDb) are printed as the reference.

FLOPs are counted analytically per sample (multiply-add = 2 FLOPs), over the 12 layers with the sequence
length N_l each layer sees (text T + image I + the prompt tokens inserted so far):
    linear_l = 2 N_l (4 D^2 + 2 D H_mlp)    (qkv, proj, fc1, fc2)      attention_l = 4 N_l^2 D  (QK^T, PV)
    forward  = sum_l (linear_l + attention_l) + 2 * patches * 3 P^2 D  (patch embedding)
    train    = forward + sum_l (linear_l + 2 attention_l)
The backbone is frozen, so backward only needs activation gradients: one matmul per forward matmul for
linear layers and two per attention matmul. MFU = achieved FLOP/s / the card's dense fp16 peak (an
--peak-tflops value; on CPU none is assumed and MFU is not printed).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mdpl.model.model import PromptedModel, compile_model, official_name
from mdpl.train.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the references live with the tests
from reference import dcp, vilt  # noqa: E402
from reference.common import base_config  # noqa: E402

SHAPES = {
    "food101": dict(text_len=512, image_hw=(384, 576), batch=32, real_text=(16, 24), classes=101),
    "mmimdb": dict(text_len=1024, image_hw=(576, 384), batch=16, real_text=(100, 400), classes=23),
}
CLIP_SHAPE = dict(text_len=77, image_hw=(224, 224))  # CLIP's context and crop, whatever the task
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense fp16/bf16 tensor-core peaks
OFFICIAL_H200 = {"food101": (75.3, 143.5), "mmimdb": (44.1, 87.0)}  # official code, samples/s (train, eval)


def make_config(task: str, **options) -> dict:
    return base_config(task, **{"max_text_len": SHAPES[task]["text_len"], **options})


def make_batch(task: str, batch: int, device: torch.device, seed: int = 0, clip: bool = False) -> dict:
    """The loader's batch: uint8 images on their canvas, token ids (CLIP: ending in end-of-text), codes 0/1/2."""
    s = {**SHAPES[task], **(CLIP_SHAPE if clip else {})}
    g = torch.Generator().manual_seed(seed)
    H, W = s["image_hw"]
    lengths = torch.randint(s["real_text"][0], min(s["real_text"][1], s["text_len"]) + 1, (batch,), generator=g)
    masks = (torch.arange(s["text_len"])[None] < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, masks.shape, generator=g) * masks
    if clip:
        ids[torch.arange(batch), lengths - 1] = 49407
    if task == "mmimdb":
        label = (torch.rand(batch, s["classes"], generator=g) > 0.8).float()
    else:
        label = torch.randint(0, s["classes"], (batch,), generator=g)
    b = {
        "image": [torch.randint(0, 256, (batch, 3, H, W), generator=g, dtype=torch.uint8)],
        "image_hw": torch.tensor([[H, W]] * batch),
        "text_ids": ids,
        "text_masks": masks,
        "label": label,
        "missing_type": torch.arange(batch) % 3,
    }
    return {k: ([v[0].to(device)] if k == "image" else v.to(device)) for k, v in b.items()}


def flops_per_sample(c: dict, T: int, image_tokens: int, patches: int) -> tuple[float, float]:
    """(forward, train) FLOPs of one sample, as in the module docstring."""
    D, H = c["hidden_size"], int(c["hidden_size"] * c["mlp_ratio"])
    per_layer_prompts = {}
    for layer in c["gen_prompt_layers"]:
        per_layer_prompts[layer] = per_layer_prompts.get(layer, 0) + 2 * c["gen_prompt_length"]
    for layer in c["shared_prompt_layers"]:
        per_layer_prompts[layer] = per_layer_prompts.get(layer, 0) + 2 * c["shared_prompt_length"]
    prompts, fwd, train = 0, 2.0 * patches * 3 * c["patch_size"] ** 2 * D, 0.0
    for layer in range(c["num_layers"]):
        prompts += per_layer_prompts.get(layer, 0)
        N = T + image_tokens + prompts
        lin, attn = 2.0 * N * (4 * D * D + 2 * D * H), 4.0 * N * N * D
        fwd += lin + attn
        train += lin + 2 * attn
    return fwd, fwd + train


def loss_of(task: str, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, label) if task == "mmimdb" else F.cross_entropy(logits, label)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB RSS (process so far)"


def ops_per_step(step, device: torch.device) -> int:
    """Launches of one profiled train step: CUDA kernels on a GPU; on a CPU, the aten operators called from
    Python (not those nested inside another operator). A launch-bound step gains from fewer of them."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        sync(device)
    events = prof.events()
    if cuda:
        return sum(e.device_type == DeviceType.CUDA for e in events)

    def top_level(e) -> bool:
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        return parent is None

    return sum(e.name.startswith("aten::") and top_level(e) for e in events)


def run_mode(task: str, mode: str, args, device: torch.device, overrides: dict | None = None) -> dict:
    """Train and eval samples/s, peak memory and per-sample FLOPs of one mode; `overrides` change the
    model config (tests use a tiny model)."""
    variant, _, method = mode.partition(":")
    method, _, backbone = (method or "mdpl").partition("@")
    backbone = backbone or "vilt"
    parts = variant.split("+")
    if parts[0] not in ("pruned", "unpruned", "reference") or not set(parts[1:]) <= {"trim", "compile"}:
        raise SystemExit(f"unknown mode {mode!r}: pruned | unpruned | reference, then +trim and/or +compile, "
                         "then :METHOD@BACKBONE")  # fmt: skip
    options = dict(masked_query=True, trim_text=True) if "trim" in parts else {}
    clip = backbone == "clip"
    if method == "dcp":  # DCP's official prompt sizes
        options.update(prompt_length=36, prompt_layers=[0, 1, 2, 3, 4, 5])
    c = make_config(task, backbone=backbone, prompt_method=method, **{**options, **(overrides or {})})
    torch.manual_seed(0)
    model = PromptedModel(Settings.from_config(c).model).to(device)
    model.prune = parts[0] != "unpruned"
    if "compile" in parts:
        compile_model(model)
    batch = make_batch(task, args.batch, device, clip=clip)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    amp = dict(device_type=device.type, dtype=args.amp_dtype, enabled=args.amp_dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp_dtype == torch.float16)
    steps = args.ref_steps if parts[0] == "reference" else args.steps
    reference = (dcp if method == "dcp" else vilt).reference_forward
    params = {official_name(n): q for n, q in [*model.named_parameters(), *model.named_buffers()]}

    def forward() -> torch.Tensor:
        if parts[0] == "reference":
            return reference(params, c, {**batch, "image": [batch["image"][0].cpu()]})[f"{task}_logits"]
        return model(batch)[f"{task}_logits"]

    def train_step() -> None:
        with torch.autocast(**amp):
            loss = loss_of(task, forward(), batch["label"])
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    def eval_step() -> None:
        with torch.no_grad(), torch.autocast(**amp):
            forward()

    out = {}
    for phase, step, train in [("train", train_step, True), ("eval", eval_step, False)]:
        model.train(train and parts[0] != "reference")
        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        out[phase] = args.batch * steps / (time.perf_counter() - t0)
        out[f"{phase}_mem"] = peak_memory(device)

    if args.count_ops:
        out["ops"] = ops_per_step(train_step, device)
    T = int(batch["text_masks"].sum(1).max()) if "trim" in parts else c["max_text_len"]
    H, W = SHAPES[task]["image_hw"]
    patches = (H // c["patch_size"]) * (W // c["patch_size"])
    out["flops"] = flops_per_sample(c, T, 1 + patches, patches) if (method, backbone) == ("mdpl", "vilt") else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 2, one warm-up and two timed steps, Food-101 only")
    ap.add_argument("--tasks", help="default food101,mmimdb (food101 with --quick)")
    ap.add_argument("--modes", default="pruned,unpruned,pruned+trim,reference", help="also: pruned+compile, ...")
    ap.add_argument("--batch", type=int, help="default: 32 Food-101 / 16 MM-IMDb (2 with --quick)")
    ap.add_argument("--steps", type=int, help="timed steps per phase (default 10 on CUDA, 2 on CPU)")
    ap.add_argument("--ref-steps", type=int, help="timed steps for the slow reference (default 2, 1 quick)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 3 on CUDA, 1 on CPU, 0 quick)")
    ap.add_argument("--amp", choices=["fp16", "bf16", "none"], help="default fp16 on CUDA, none on CPU")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense peak, for MFU")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    ap.add_argument("--count-ops", action="store_true", help="also count launches per train step (profiled)")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    args.tasks = args.tasks or ("food101" if args.quick else "food101,mmimdb")
    args.steps = args.steps or (2 if args.quick else 10 if cuda else 2)
    args.ref_steps = args.ref_steps or (1 if args.quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick or not cuda else 3)
    amp = args.amp or ("fp16" if cuda else "none")
    args.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}[amp]
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if cuda and k in name), None)
    print(f"device: {name}; autocast: {amp}; torch {torch.__version__}; MFU peak: {peak} TFLOP/s")

    for task in args.tasks.split(","):
        batch = args.batch or (2 if args.quick else SHAPES[task]["batch"])
        args_task = argparse.Namespace(**{**vars(args), "batch": batch})
        s = SHAPES[task]
        print(
            f"\n== {task}: batch {batch}, text {s['text_len']} (real {s['real_text'][0]}-{s['real_text'][1]}), "
            f"image {s['image_hw'][0]}x{s['image_hw'][1]}"
        )
        results = {}
        for mode in args.modes.split(","):
            try:
                r = results[mode] = run_mode(task, mode, args_task, device)
            except torch.OutOfMemoryError:
                print(f"{mode:>10}: out of memory")
                torch.cuda.empty_cache()
                continue
            ops = f"; {r['ops']} {'kernels' if cuda else 'operators'} per train step" if "ops" in r else ""
            line = (f"{mode:>10}: train {r['train']:.3g} samples/s (peak {r['train_mem']}); eval {r['eval']:.3g} "
                    f"samples/s (peak {r['eval_mem']})")  # fmt: skip
            if r["flops"] is not None:
                fwd, train = r["flops"]
                line += (f"; {r['train'] * train / 1e12:.3g} / {r['eval'] * fwd / 1e12:.3g} TFLOP/s train / eval"
                         f"; per sample {fwd / 1e9:.0f} GFLOP fwd, {train / 1e9:.0f} GFLOP train")  # fmt: skip
                if peak is not None:
                    line += (
                        f", MFU train {r['train'] * train / peak / 1e12:.1%} eval {r['eval'] * fwd / peak / 1e12:.1%}"
                    )
            print(line + ops)
        if "reference" in results:
            ref = results["reference"]
            for mode in results:
                if ":" not in mode and mode != "reference":
                    print(
                        f"{mode:>10} / reference: train {results[mode]['train'] / ref['train']:.2f}x, "
                        f"eval {results[mode]['eval'] / ref['eval']:.2f}x"
                    )
        pairs = [("pruned", "unpruned"), ("pruned+compile", "pruned"), ("pruned+trim+compile", "pruned+trim"),
                 ("pruned:dcp@clip", "unpruned:dcp@clip"), ("pruned:dcp@clip", "pruned"),
                 ("pruned:mdpl@clip", "pruned:dcp@clip")]  # fmt: skip
        for a, b in pairs:
            if a in results and b in results:
                x, y = results[a], results[b]
                print(f"  {a} / {b}: train {x['train'] / y['train']:.2f}x, eval {x['eval'] / y['eval']:.2f}x")
        if task in OFFICIAL_H200:
            tr, ev = OFFICIAL_H200[task]
            line = f"  official code (H200, fp16): train {tr} / eval {ev} samples/s"
            if cuda:  # a CPU run is not comparable
                line += "".join(
                    f"; {m} vs official: train {results[m]['train'] / tr:.2f}x, eval {results[m]['eval'] / ev:.2f}x"
                    for m in results
                    if not m.startswith("reference")
                )
            print(line)


if __name__ == "__main__":
    main()
