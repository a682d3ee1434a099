"""Benchmark (not a test): generation speed, animegen (Generator + speed-ups) vs plain diffusers.

    python bench/generate.py --arch sdxl                 # GPU: real-size SDXL, random weights, 1024², 28 steps
    python bench/generate.py --arch sd15 --ablation      # every speed-up on/off
    python bench/generate.py --arch tiny-sd15 --steps 4 --size 64 --batch-sizes 1,2   # CPU smoke run

Both sides get the same modules (built from the same seed), the same scheduler (Euler a), the same
CPU-seeded noise and output type, so the per-image difference column checks that a speed-up did not
change the picture. Warm-up calls are excluded from the timings; the first call's extra time is
reported as compile/warm-up time. Model FLOPs per UNet step come from `FlopCounterMode` on the real
UNet inputs; "% of peak" divides UNet FLOPs per second (VAE and text encoders not counted, so it is a
lower bound) by a dense matmul measured in the same run in the same dtype.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

ARCHES = ("tiny-sd15", "tiny-sdxl", "sd15", "sdxl")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "src" / "animegen" / "models" / "configs"
PROMPT, NEGATIVE = "1girl, solo, smile, looking at viewer, masterpiece", "lowres, bad anatomy"


# ---- models ------------------------------------------------------------------------------------------
def build_pipeline(arch: str, device: str, dtype: torch.dtype, seed: int = 0):
    """The tiny test models, or real-size SD1.5 / SDXL with random weights built on `device`."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    if arch.startswith("tiny-"):
        from animegen.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(arch.removeprefix("tiny-"), seed=seed)
    else:
        components = _real_size_components("sd1" if arch == "sd15" else "sdxl", device)
        pipe = (StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False) if arch == "sd15"
                else StableDiffusionXLPipeline(**components))
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _real_size_components(family: str, device: str) -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from animegen.models.assets import load_tokenizer

    def cfg(name):
        return json.loads((CONFIG_DIR / family / f"{name}.json").read_text())

    parts = {"tokenizer": load_tokenizer(), "scheduler": EulerDiscreteScheduler.from_config(cfg("scheduler"))}
    with torch.device(device):  # initialise directly on the GPU: CPU init of 2.6B params takes minutes
        parts["unet"] = UNet2DConditionModel.from_config(cfg("unet"))
        parts["vae"] = AutoencoderKL.from_config(cfg("vae"))
        parts["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_dict(cfg("text_encoder")))
        if family == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(cfg("text_encoder_2")))
    if family == "sdxl":
        parts["tokenizer_2"] = load_tokenizer(pad_token="!")
    return parts


# ---- measurement ---------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak_tflops(device: str, dtype: torch.dtype) -> float:
    """Dense N×N matmul throughput in `dtype`: the practical FLOP ceiling of this device."""
    n = 8192 if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 20 if device.startswith("cuda") else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def unet_flops_per_step(pipe, batch: int, size: int) -> int:
    """FLOPs of one UNet call (CFG doubles the batch) on the inputs the pipeline really passes."""
    from torch.utils.flop_counter import FlopCounterMode

    captured = {}

    def grab(module, args, kwargs):
        captured.setdefault("call", (args, kwargs))

    handle = pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=1, width=size, height=size,
                 num_images_per_prompt=batch, output_type="latent")
    finally:
        handle.remove()
    args, kwargs = captured["call"]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        pipe.unet(*args, **kwargs)
    return int(counter.get_total_flops())


def real_size_unet_flops(arch: str, batch: int) -> int:
    """FLOPs of one real-size UNet step (CFG batch 2×batch) counted on the meta device: no GPU, no time."""
    from torch.utils.flop_counter import FlopCounterMode

    family, size, context = {"sd15": ("sd1", 512, 768), "sdxl": ("sdxl", 1024, 2048)}[arch]
    with torch.device("meta"):
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(json.loads((CONFIG_DIR / family / "unet.json").read_text()))
        n = 2 * batch
        kwargs = {"encoder_hidden_states": torch.empty(n, 77, context)}
        if family == "sdxl":
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.empty(n, 1280), "time_ids": torch.empty(n, 6)}
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            unet(torch.empty(n, 4, size // 8, size // 8), torch.full((n,), 500), **kwargs)
    return int(counter.get_total_flops())


@dataclass
class Timing:
    name: str
    batch: int
    seconds_per_image: float
    first_call_s: float  # warm-up call (includes compilation for compiled variants)
    steady_call_s: float
    min_call_s: float
    peak_mem_gb: float | None
    max_abs_diff: float | None = None  # vs the diffusers baseline image with the same seed
    notes: list[str] = field(default_factory=list)


class Runner:
    """One timed configuration: `call()` generates a batch and returns float images (B, H, W, 3)."""

    def __init__(self, name: str, call, device: str, notes: list[str] | None = None):
        self.name, self.call, self.device, self.notes = name, call, device, notes or []
        self.first, self.times, self.image, self.peak = 0.0, [], None, None

    def timed(self) -> float:
        _sync(self.device)
        start = time.perf_counter()
        self.image = self.call()
        _sync(self.device)
        return time.perf_counter() - start

    def warm_up(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        self.first = self.timed()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def measure(self) -> None:
        self.times.append(self.timed())
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated() / 2**30


def diffusers_runner(pipe, batch: int, size: int, steps: int, seed: int, device: str) -> Runner:
    """The plain diffusers pipeline, as a user would call it (no speed-ups; same sampler and CFG)."""
    from diffusers import EulerAncestralDiscreteScheduler

    from animegen.generate.request import DEFAULT_CFG

    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)

    def call():
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
        with torch.no_grad():
            return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, width=size, height=size,
                        guidance_scale=DEFAULT_CFG, num_images_per_prompt=batch, generator=gens,
                        output_type="np").images

    return Runner("diffusers (plain pipeline)", call, device)


def animegen_runner(name: str, pipe, batch: int, size: int, steps: int, seed: int, device: str,
                    notes: list[str]) -> Runner:
    from animegen.generate import GenerationRequest, Generator

    generator = Generator(f"bench-{size}", pipe=pipe)
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler a", steps=steps,
                                seed=seed, width=size, height=size, n=batch, batch_size=batch)
    return Runner(name, lambda: np.stack([g.array for g in generator(request)]), device, notes)


def variants(device: str, ablation: bool, cpu_compile: bool) -> list[tuple[str, dict]]:
    """(row name, apply_speedups options). "none" is animegen with nothing applied."""
    cuda = device.startswith("cuda")
    off = {"channels_last": False, "fuse_qkv": False, "compile": False, "vae_tiling": False,
           "vae_slicing": False, "cuda_graphs": False}
    can_compile = cuda or cpu_compile
    full = dict(off, channels_last=True, fuse_qkv=True, compile=can_compile)
    rows = [("animegen: device defaults", {}), ("animegen: all speed-ups", full)]
    if cuda:
        rows.append(("animegen: all + CUDA graphs", dict(full, cuda_graphs=True)))
    if ablation:
        rows += [("animegen: none", off), ("+ channels_last", dict(off, channels_last=True)),
                 ("+ fuse_qkv", dict(off, fuse_qkv=True)), ("classic attention (sdpa off)", dict(off, sdpa=False)),
                 ("+ vae_slicing", dict(off, vae_slicing=True)), ("+ vae_tiling", dict(off, vae_tiling=True))]
        if can_compile:
            rows.append(("+ compile", dict(off, compile=True)))
        if cuda:
            rows.append(("+ compile + CUDA graphs", dict(off, compile=True, cuda_graphs=True)))
        rows += [(f"all − {k}", dict(full, **{k: False})) for k in ("channels_last", "fuse_qkv", "compile")
                 if full[k]]
    return rows


def run(arch: str, *, device: str, dtype: torch.dtype, batch_sizes: list[int], size: int, steps: int,
        repeats: int, ablation: bool, cpu_compile: bool = False, seed: int = 0) -> dict:
    base = build_pipeline(arch, device, dtype, seed)
    result = {"arch": arch, "device": device_name(device), "dtype": str(dtype).removeprefix("torch."),
              "size": size, "steps": steps, "repeats": repeats,
              "matmul_peak_tflops": matmul_peak_tflops(device, dtype), "flops_per_unet_step": {}, "rows": []}
    if not (device.startswith("cuda") or cpu_compile):
        result["skipped"] = [("torch.compile: off on CPU (inductor took >12 min for the tiny UNet on a 2-core "
                              "machine; pass --cpu-compile to include it)"), "CUDA graphs: need a GPU"]
    for batch in batch_sizes:
        result["flops_per_unet_step"][batch] = unet_flops_per_step(base, batch, size)
    for batch in batch_sizes:
        make = [lambda b=batch: diffusers_runner(copy.deepcopy(base), b, size, steps, seed, device)]
        for name, options in variants(device, ablation, cpu_compile):
            make.append(lambda name=name, options=options, b=batch: _speedup_runner(
                name, options, base, b, size, steps, seed, device))
        if device.startswith("cuda"):
            # GPU timings are stable: one configuration at a time, so peak memory is per configuration
            for factory in make:
                runner = factory()
                runner.warm_up()
                for _ in range(repeats):
                    runner.measure()
                _record(result, runner, batch)
                del runner
                gc.collect()
        else:
            # a shared CPU is noisy: interleave configurations so load spikes hit them all alike
            runners = [factory() for factory in make]
            for runner in runners:
                runner.warm_up()
            for _ in range(repeats):
                for runner in runners:
                    runner.measure()
            for runner in runners:
                _record(result, runner, batch)
    result.pop("_reference", None)
    return result


def _speedup_runner(name, options, base, batch, size, steps, seed, device) -> Runner:
    from animegen.generate.speed import apply_speedups

    pipe = copy.deepcopy(base)
    report = apply_speedups(pipe, **options)
    on = ", ".join(k for k, v in report.applied.items() if v) or "nothing"
    return animegen_runner(name, pipe, batch, size, steps, seed, device, [f"on: {on}"])


def _record(result: dict, runner: Runner, batch: int) -> None:
    """Timing row; the image difference is against the diffusers row of the same batch (same seeds)."""
    steady = statistics.median(runner.times)
    reference = result.setdefault("_reference", {})
    if runner.name.startswith("diffusers"):
        reference[batch] = runner.image
        diff = None
    else:
        diff = float(np.abs(runner.image - reference[batch]).max())
    result["rows"].append(asdict(Timing(runner.name, batch, steady / batch, runner.first, steady,
                                        min(runner.times), runner.peak, diff, runner.notes)))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


# ---- report ---------------------------------------------------------------------------------------------
def to_markdown(result: dict) -> str:
    peak = result["matmul_peak_tflops"]
    title = (f"### Generation: {result['arch']}, {result['size']}², {result['steps']} steps, {result['dtype']}, "
             f"{result['device']}")
    intro = (f"Dense matmul peak measured in this run ({result['dtype']}): {peak:.3g} TFLOP/s. s/image = median "
             f"of {result['repeats']} timed call(s) after one warm-up call (min in brackets); the ratio uses medians.")
    lines = [title, "", intro, ""]
    for note in result.get("skipped", []):
        lines.append(f"- skipped — {note}")
    header = ("| variant | batch | s/image (min) | ratio vs diffusers | first call s (+ warm-up/compile) | "
              "peak GB | UNet TFLOP/s | % of matmul peak | max abs diff vs diffusers | speed-ups on |")
    lines += ["", header, "|---|---|---|---|---|---|---|---|---|---|"]
    baseline = {r["batch"]: r["seconds_per_image"] for r in result["rows"] if r["name"].startswith("diffusers")}
    for r in result["rows"]:
        flops = result["flops_per_unet_step"][r["batch"]] * result["steps"]
        tflops = flops / r["steady_call_s"] / 1e12
        ratio = baseline[r["batch"]] / r["seconds_per_image"]
        extra = max(0.0, r["first_call_s"] - r["steady_call_s"])
        mem = "n/a (CPU)" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.2f}"
        diff = "—" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        lines.append(f"| {r['name']} | {r['batch']} | {r['seconds_per_image']:.3f} ({r['min_call_s'] / r['batch']:.3f}) | "
                     f"{ratio:.2f}× | "
                     f"{r['first_call_s']:.2f} (+{extra:.2f}) | {mem} | {tflops:.3g} | {100 * tflops / peak:.1f}% | "
                     f"{diff} | {'; '.join(r['notes'])} |")
    lines.append("")
    lines.append("UNet FLOPs per denoising step (CFG batch = 2 × batch): " + ", ".join(
        f"batch {b}: {f / 1e9:.3g} GFLOP" for b, f in result["flops_per_unet_step"].items()))
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=ARCHES, default="sdxl")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                    help="default: bf16 on GPU (what the loader picks), fp32 on CPU")
    ap.add_argument("--size", type=int, default=None, help="default: 1024 for SDXL, 512 for SD1.5, 64 for tiny")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ablation", action="store_true", help="time every speed-up on/off")
    ap.add_argument("--cpu-compile", action="store_true", help="include torch.compile on CPU (very slow)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not args.arch.startswith("tiny-") and not device.startswith("cuda"):
        sys.exit(f"--arch {args.arch} is a real-size model; it needs a CUDA GPU (use tiny-sd15 / tiny-sdxl on CPU)")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dtype = dtypes[args.dtype] if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    size = args.size or (64 if args.arch.startswith("tiny-") else 1024 if args.arch == "sdxl" else 512)
    result = run(args.arch, device=device, dtype=dtype, batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                 size=size, steps=args.steps, repeats=args.repeats, ablation=args.ablation,
                 cpu_compile=args.cpu_compile)
    markdown = to_markdown(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
