"""Training throughput benchmark (not a test): animegen's trainer vs a plain diffusers-example-style loop.

Both run the same model, adapter, batch and resolution in the same process. On CPU the two loops run in
lockstep (one plain step between two animegen steps) and each step is timed in CPU seconds, so other jobs
on a shared machine slow both alike; on CUDA they run one after the other (wall time after a synchronize)
so each has its own peak memory (max allocated). steps/s = 1 / the median step time of a repeat; the
medians over `--repeats` repeats of steps/s and of the per-repeat ratio are reported.

    python bench/train.py --mode tiny                 # tiny random SD1.5 on CPU (default)
    python bench/train.py --mode sd15-ia3 --steps 50  # real-size SD1.5 UNet, iA3, 512², GPU
    python bench/train.py --mode sdxl-lora --steps 30 # real-size SDXL UNet, LoRA r16, 1024², GPU

Real-size models use the shipped architecture configs (`animegen/models/configs`) with random weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

MODES = {
    # name: (arch, adapter kind, resolution, batch, mixed precision, gradient checkpointing)
    "tiny": ("sd15", "lora", 64, 2, "no", False),
    "sd15-ia3": ("sd15", "ia3", 512, 1, "bf16", False),
    "sdxl-lora": ("sdxl", "lora", 1024, 1, "bf16", True),
}


def clock() -> float:
    """CPU seconds of this process on CPU (other jobs on a shared machine do not inflate them; torch's
    threads are this process's), wall seconds on CUDA (after a synchronize)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def make_model(arch: str, real_size: bool, out: Path) -> Path:
    from animegen.models.tiny import build_tiny_components, save_tiny_model

    if not real_size:
        save_tiny_model(arch, out)
        return out
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg_dir = Path(__import__("animegen.models", fromlist=["x"]).__file__).parent / "configs" / (
        "sd1" if arch == "sd15" else "sdxl")
    comps = build_tiny_components(arch)
    comps["unet"] = UNet2DConditionModel.from_config(json.loads((cfg_dir / "unet.json").read_text()))
    comps["vae"] = AutoencoderKL.from_config(json.loads((cfg_dir / "vae.json").read_text()))
    comps["text_encoder"] = CLIPTextModel(CLIPTextConfig(**json.loads((cfg_dir / "text_encoder.json").read_text())))
    if arch == "sdxl":
        comps["text_encoder_2"] = CLIPTextModelWithProjection(
            CLIPTextConfig(**json.loads((cfg_dir / "text_encoder_2.json").read_text())))
        StableDiffusionXLPipeline(**comps).save_pretrained(out)
    else:
        StableDiffusionPipeline(**comps, requires_safety_checker=False).save_pretrained(out)
    return out


def make_data(root: Path, res: int, n: int = 8) -> Path:
    folder = root / "1_bench"
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (res, res), (30 * i % 255, 100, 200)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"zxq, 1girl, sample {i}")
    return root


def animegen_config(model: Path, data: Path, out: Path, mode: str, steps: int):
    from animegen.train.config import validate_config

    arch, kind, res, batch, mp, gc = MODES[mode]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return validate_config({
        "model": {"base": str(model)},
        "adapter": {"kind": kind, "rank": 16, "alpha": 16.0, "targets": "attention_ff" if kind == "ia3" else "attention"},
        "optimizer": {"name": "adamw", "lr": 1e-4, "scheduler": "constant"},
        "data": {"datasets": [{"path": str(data)}], "resolution": res, "min_bucket_side": 64},
        "train": {"output_dir": str(out), "max_steps": steps, "batch_size": batch, "mixed_precision": mp,
                  "gradient_checkpointing": gc, "device": device},
        "log": {"progress": False, "tensorboard": False},
        "export": {"formats": ["kohya"]},
    })


def bench_animegen(model: Path, data: Path, out: Path, mode: str, steps: int, between=None) -> list[float]:
    """Seconds per step of `Trainer.run` (the real loop), after 3 warm-up steps. `between()`, when given,
    runs between two steps, outside the timed spans (the interleaved plain-loop step)."""
    from animegen.train.trainer import Trainer

    trainer = Trainer(animegen_config(model, data, out, mode, steps + 4))
    spans: list[float] = []
    last = [None]
    real_loss_for = trainer.loss_for

    def timed(micro, batch_idx):  # one call per micro step: a step spans from one call to the next
        now = clock()
        if last[0] is not None:
            spans.append(now - last[0])
        if between is not None:
            between()
        last[0] = clock()
        return real_loss_for(micro, batch_idx)

    trainer.loss_for = timed
    trainer.run()
    return spans[3:]


def plain_loop(model: Path, mode: str):
    """The diffusers `train_text_to_image_lora.py` pattern, stripped down (precomputed latents/text): a
    generator that runs one training step per `next()`."""
    from diffusers import DDPMScheduler
    from peft import IA3Config, LoraConfig

    from animegen.models.loading import load_pipeline

    arch, kind, res, batch, mp, gc = MODES[mode]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"no": torch.float32, "bf16": torch.bfloat16}[mp]
    pipe = load_pipeline(str(model), device=device, dtype=dtype)
    unet = pipe.unet
    unet.requires_grad_(False)
    if kind == "ia3":
        unet.add_adapter(IA3Config(target_modules=["to_k", "to_v", "ff.net.2"], feedforward_modules=["ff.net.2"]))
    else:
        unet.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if gc:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn(batch, 4, res // 8, res // 8, device=device)
    dim = unet.config.cross_attention_dim
    hidden = torch.randn(batch, 77, dim, device=device, dtype=dtype)
    extra = {}
    if arch == "sdxl":
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn(batch, 1280, device=device, dtype=dtype),
                                       "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * batch,
                                                                device=device, dtype=dtype)}}
    unet.train()
    while True:
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=device)
        noisy = sched.add_noise(latents, noise, t)
        with torch.autocast(device, dtype=dtype, enabled=mp != "no"):
            pred = unet(noisy.to(dtype), t, hidden, **extra).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        yield


def bench_plain(model: Path, mode: str, steps: int) -> list[float]:
    loop = plain_loop(model, mode)
    spans = []
    for _ in range(steps + 3):
        t0 = clock()
        next(loop)
        spans.append(clock() - t0)
    return spans[3:]


def bench_interleaved(model: Path, data: Path, out: Path, mode: str, steps: int) -> tuple[list[float], list[float]]:
    """Both loops in lockstep, one plain step between two animegen steps: a burst of load from another
    process on a shared CPU then slows both alike instead of whichever loop happened to run then."""
    loop = plain_loop(model, mode)
    plain: list[float] = []

    def plain_step():
        t0 = clock()
        next(loop)
        plain.append(clock() - t0)

    ours = bench_animegen(model, data, out, mode, steps, between=plain_step)
    return ours, plain[3:]


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=list(MODES), default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5,
                    help="runs of both loops; the medians over them are reported")
    args = ap.parse_args()
    arch, kind, res, *_ = MODES[args.mode]
    cuda = torch.cuda.is_available()
    ours, plain, ratios, peaks = [], [], [], {"animegen": [], "plain_loop": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(arch, args.mode != "tiny", tmp / "model")
        data = make_data(tmp / "data", res)
        for r in range(args.repeats):
            if cuda:  # one loop at a time, so each has its own peak memory
                torch.cuda.reset_peak_memory_stats()
                a = bench_animegen(model, data, tmp / f"run{r}", args.mode, args.steps)
                peaks["animegen"].append(peak_gb())
                torch.cuda.reset_peak_memory_stats()
                b = bench_plain(model, args.mode, args.steps)
                peaks["plain_loop"].append(peak_gb())
            else:
                a, b = bench_interleaved(model, data, tmp / f"run{r}", args.mode, args.steps)
            ours.append(1 / statistics.median(a))
            plain.append(1 / statistics.median(b))
            ratios.append(ours[-1] / plain[-1])
    print(json.dumps({"mode": args.mode, "device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads(),
                      "timing": "wall, one loop after the other" if cuda else "CPU time, loops interleaved per step",
                      "repeats": args.repeats, "steps_per_repeat": args.steps,
                      "animegen": {"steps_per_s": statistics.median(ours),
                                   "peak_gb": max(peaks["animegen"]) if cuda else None},
                      "plain_loop": {"steps_per_s": statistics.median(plain),
                                     "peak_gb": max(peaks["plain_loop"]) if cuda else None},
                      "ratio_animegen_over_plain": statistics.median(ratios),
                      "ratios_per_repeat": [round(x, 3) for x in ratios]}, indent=2))


if __name__ == "__main__":
    main()
