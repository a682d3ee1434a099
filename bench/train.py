"""Training throughput benchmark (not a test): animegen's trainer vs a plain diffusers-example-style loop.

Both run the same model, adapter, batch and resolution in the same process; we report steps/s, the
ratio, and peak memory (CUDA: max allocated; CPU: peak RSS growth is not separable per loop, so only
steps/s is compared there).

    python bench/train.py --mode tiny                 # tiny random SD1.5 on CPU (default)
    python bench/train.py --mode sd15-ia3 --steps 50  # real-size SD1.5 UNet, iA3, 512², GPU
    python bench/train.py --mode sdxl-lora --steps 30 # real-size SDXL UNet, LoRA r16, 1024², GPU

Real-size models use the shipped architecture configs (`animegen/models/configs`) with random weights.
"""

from __future__ import annotations

import argparse
import json
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


def bench_animegen(model: Path, data: Path, out: Path, mode: str, steps: int) -> dict:
    from animegen.train.config import validate_config
    from animegen.train.trainer import Trainer

    arch, kind, res, batch, mp, gc = MODES[mode]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = validate_config({
        "model": {"base": str(model)},
        "adapter": {"kind": kind, "rank": 16, "alpha": 16.0, "targets": "attention_ff" if kind == "ia3" else "attention"},
        "optimizer": {"name": "adamw", "lr": 1e-4, "scheduler": "constant"},
        "data": {"datasets": [{"path": str(data)}], "resolution": res, "min_bucket_side": 64},
        "train": {"output_dir": str(out), "max_steps": steps + 3, "batch_size": batch, "mixed_precision": mp,
                  "gradient_checkpointing": gc, "device": device},
        "log": {"progress": False, "tensorboard": False},
        "export": {"formats": ["kohya"]},
    })
    trainer = Trainer(cfg)
    times: list[float] = []
    real_loss_for = trainer.loss_for

    def timed(micro, batch_idx):  # timestamps per micro step; the first 3 are warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        return real_loss_for(micro, batch_idx)

    trainer.loss_for = timed
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    span = times[-1] - times[3]
    return {"steps_per_s": (len(times) - 4) / span,
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def bench_plain(model: Path, mode: str, steps: int) -> dict:
    """The diffusers `train_text_to_image_lora.py` pattern, stripped down: precomputed latents/text."""
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
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = None
    for i in range(steps + 3):
        if i == 3:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
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
    if device == "cuda":
        torch.cuda.synchronize()
    return {"steps_per_s": steps / (time.perf_counter() - t0),
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=list(MODES), default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    arch, kind, res, *_ = MODES[args.mode]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_model(arch, args.mode != "tiny", tmp / "model")
        data = make_data(tmp / "data", res)
        ours = bench_animegen(model, data, tmp / "run", args.mode, args.steps)
        plain = bench_plain(model, args.mode, args.steps)
    ratio = ours["steps_per_s"] / plain["steps_per_s"]
    print(json.dumps({"mode": args.mode, "device": "cuda" if torch.cuda.is_available() else "cpu",
                      "threads": torch.get_num_threads(), "animegen": ours, "plain_loop": plain,
                      "ratio_animegen_over_plain": ratio}, indent=2))


if __name__ == "__main__":
    main()
