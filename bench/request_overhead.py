"""Per-request generation costs beyond the pipeline (not a test): prompt encoding, LoRA merge/unmerge,
LoRA hashing, infotext, each as a share of the pipeline's own time (sampling + VAE decode).

A real-size SD1.5 architecture with random weights on CPU at a small size (default 64², 4 Euler steps,
2 images per request), with two random rank-16 kohya LoRAs on every attention projection of the UNet and
the text encoder (~the shape of a typical character LoRA). One round is five requests: none, LoRA A
(switch none→A), A again, B (switch A→B), none (B→none); `--repeats` rounds, medians reported. Times are
CPU seconds of this process (other jobs on a shared machine do not inflate them); run with
OMP_NUM_THREADS=1. The pipeline's time grows with the size and step count and these costs do not, so
the shares here bound those at 512², 28 steps from above.

    OMP_NUM_THREADS=1 python bench/request_overhead.py             # real-size SD1.5 (needs ~6 GB RAM)
    OMP_NUM_THREADS=1 python bench/request_overhead.py --tiny      # dry run on the tiny model (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SCENARIOS = [("no LoRA", None), ("none → A", "A"), ("A again", "A"), ("A → B", "B"), ("B → none", None)]
COSTS = ("prompt encoding", "LoRA merge/unmerge", "LoRA hashing", "infotext (fields + text, incl. hashing)",
         "TI hashes")


def random_lora(pipe, rank: int, seed: int):
    """A kohya-style LoRA on every attention projection of the UNet and the (first) text encoder."""
    from animegen.models.lora import LoraFile, LoraModule

    g = torch.Generator().manual_seed(seed)
    modules = {}
    for component, names in (("unet", ("to_q", "to_k", "to_v", "to_out.0")),
                             ("text_encoder", ("q_proj", "k_proj", "v_proj", "out_proj"))):
        for path, layer in getattr(pipe, component).named_modules():
            if isinstance(layer, torch.nn.Linear) and path.endswith(names):
                target = f"{component}.{path}"
                modules[target] = LoraModule(target, "lora", {
                    "lora_down.weight": torch.randn(rank, layer.in_features, generator=g) * 0.01,
                    "lora_up.weight": torch.randn(layer.out_features, rank, generator=g) * 0.01}, alpha=float(rank))
    return LoraFile(modules, {})


class Timers:
    """CPU seconds spent in wrapped callables, per label, for the current request."""

    def __init__(self):
        self.now: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, label: str) -> None:
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.process_time()
            try:
                return real(*args, **kwargs)
            finally:
                self.now[label] += time.process_time() - t0

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        out, self.now = dict(self.now), defaultdict(float)
        return out


def build_generator(tiny: bool, lora_dir: Path):
    from animegen.generate import Generator

    if tiny:
        from diffusers import StableDiffusionPipeline

        from animegen.models.tiny import build_tiny_components

        pipe = StableDiffusionPipeline(**build_tiny_components("sd15"), requires_safety_checker=False)
    else:
        from real_size import real_pipeline

        pipe = real_pipeline("sd15")
    return Generator(pipe=pipe, model_name="bench", lora_dir=lora_dir)


def instrument(gen) -> Timers:
    import animegen.models.lora as lora_pkg
    from animegen.generate import engine
    from animegen.prompts import encode

    timers = Timers()
    kp = gen.sampling()
    for name in ("txt2img", "decode"):
        timers.wrap(kp, name, "pipeline")
    timers.wrap(encode, "encode_pass_texts", "prompt encoding")  # what `generate.conditioning` calls
    timers.wrap(gen, "_apply_loras", "LoRA merge/unmerge")
    timers.wrap(lora_pkg, "lora_hash", "LoRA hashing")
    timers.wrap(gen, "_parameters", "infotext (fields + text, incl. hashing)")
    timers.wrap(engine, "format_infotext", "infotext (fields + text, incl. hashing)")
    timers.wrap(gen.embeddings, "infotext_hashes", "TI hashes")
    return timers


def reference_512(pipe, steps: int = 28) -> dict:
    """CPU seconds of one SD1.5 512² image, 28 steps, extrapolated from one timed CFG UNet call (batch 2)
    and one VAE decode at 512²: what the per-request costs are a share of in real use."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 64, 64, generator=g)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        t0 = time.process_time()
        pipe.unet(latents, torch.tensor([500, 500]), text)
        unet_s = time.process_time() - t0
        t0 = time.process_time()
        pipe.vae.decode(latents[:1] / pipe.vae.config.scaling_factor)
        vae_s = time.process_time() - t0
    return {"unet_cfg_step_s": round(unet_s, 2), "vae_decode_s": round(vae_s, 2),
            "image_s": round(steps * unet_s + vae_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny model (a dry run of the script)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--images", type=int, default=2, help="images per request (one at a time)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-reference", action="store_true",
                    help="skip timing one 512² UNet step and decode (~1 min on one core; off with --tiny)")
    args = ap.parse_args()
    from animegen.generate import GenerationRequest
    from animegen.models.lora import write_lora

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        gen = build_generator(args.tiny, folder)
        built_s = time.perf_counter() - t0
        sizes = {}
        for i, name in enumerate("AB"):
            path = write_lora(random_lora(gen.pipe, args.rank, i), folder / f"{name}.safetensors")
            sizes[name] = path.stat().st_size
        timers = instrument(gen)
        rows: dict[str, list[dict[str, float]]] = defaultdict(list)
        prompt = "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, outdoors"
        for _ in range(args.repeats + 1):  # the first round warms up
            for label, lora in SCENARIOS:
                tag = f" <lora:{lora}:0.8>" if lora else ""
                req = GenerationRequest(prompt + tag, negative_prompt="lowres, bad anatomy", width=args.size,
                                        height=args.size, steps=args.steps, sampler="Euler", seed=1, n=args.images)
                t = time.process_time()
                gen(req)
                total = time.process_time() - t
                got = timers.take()
                got["request"] = total
                rows[label].append(got)
        for label in rows:
            rows[label] = rows[label][1:]
        ref = None if args.tiny or args.no_reference else reference_512(gen.pipe)
    table = {}
    for label, runs in rows.items():
        med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in ("request", "pipeline", *COSTS)}
        pipe_s = med["pipeline"]
        table[label] = {
            "pipeline_s": round(pipe_s, 4),
            **{f"{k} ms": round(med[k] * 1e3, 2) for k in COSTS},
            **{f"{k} %": round(100 * med[k] / pipe_s, 2) for k in COSTS},
            "all beyond the pipeline %": round(100 * (med["request"] - pipe_s) / pipe_s, 2),
        }
        if ref is not None:  # the same costs against the request's images at 512², 28 steps
            table[label]["all beyond the pipeline, % of 512² 28 steps"] = round(
                100 * (med["request"] - pipe_s) / (args.images * ref["image_s"]), 3)
    print(json.dumps({"model": "tiny-sd15" if args.tiny else "real-size SD1.5, random weights",
                      "device": "cpu", "threads": torch.get_num_threads(), "size": args.size, "steps": args.steps,
                      "images_per_request": args.images, "lora_rank": args.rank,
                      "lora_file_mb": {k: round(v / 2**20, 1) for k, v in sizes.items()},
                      "build_s": round(built_s, 1), "repeats": args.repeats,
                      "reference_512_28_steps": ref, "scenarios": table}, indent=2))


if __name__ == "__main__":
    main()
