"""Model load benchmark (not a test): a real-size single file in the A1111 layout, random weights, loaded
by animegen vs reading its bytes (`cat file > /dev/null`), with the loader's peak RSS against the file size.

The file is written once (fp16, ~6.9 GB for SDXL, ~2.1 GB for SD1.5) into `--dir`; each load runs in a
fresh process so its peak RSS (`VmHWM`) is its own, and the process's RSS after importing torch and
diffusers is reported as the baseline. `cat` runs right before each load, so both read a warm page cache
(the load's time is then conversion and copying, not the disk).

    python bench/load.py --arch sdxl                 # ~7 GB on disk, ~8 GB RAM
    python bench/load.py --arch sd15 --fp32          # also the fp32 load of the fp16 file
    python bench/load.py --arch tiny                 # dry run (seconds)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def write_checkpoint(arch: str, path: Path) -> Path:
    """A random-weight fp16 pipeline of `arch`, saved as an A1111 single file (built without fp32 copies)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from animegen.models.single_file import save_single_file

    if arch == "tiny":
        from animegen.models.tiny import build_tiny_components

        comps, arch = build_tiny_components("sd15"), "sd15"
    else:
        from real_size import real_components

        comps = real_components(arch, device="meta")
        g = torch.Generator().manual_seed(0)
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = comps.get(name)
            if module is None:
                continue
            module = module.to(torch.float16).to_empty(device="cpu")
            with torch.no_grad():
                for key, t in [*module.named_parameters(), *module.named_buffers()]:
                    if key.endswith("position_ids"):
                        t.copy_(torch.arange(t.shape[-1]).expand_as(t))
                    elif t.is_floating_point():
                        t.normal_(0.0, 0.02, generator=g)
            comps[name] = module
    pipe = (StableDiffusionXLPipeline(**comps) if arch == "sdxl"
            else StableDiffusionPipeline(**comps, requires_safety_checker=False))
    return save_single_file(pipe, path, dtype=torch.float16)


def cat_seconds(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
    return time.perf_counter() - t0


def peak_rss_gib() -> float:
    """This process's peak resident set (`VmHWM`), in GiB. Not `ru_maxrss`: Linux carries that over from the
    parent through fork and exec, so a child of a parent that just wrote a 7 GB file starts at 7 GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(path: str, dtype: str) -> None:
    """Runs in its own process: load once, print seconds and RSS figures (GiB) as JSON."""
    import accelerate  # noqa: F401  (what the loader imports, imported before the baseline and the clock)
    import diffusers.loaders.single_file_utils  # noqa: F401
    import transformers  # noqa: F401
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

    from animegen.models.single_file import load_single_file

    base = peak_rss_gib()
    t0 = time.perf_counter()
    pipe = load_single_file(path, dtype=getattr(torch, dtype))
    seconds = time.perf_counter() - t0
    params = sum(p.numel() * p.element_size() for m in pipe.components.values()
                 if isinstance(m, torch.nn.Module) for p in m.parameters())
    peak = peak_rss_gib()
    print(json.dumps({"load_s": seconds, "baseline_rss_gib": base, "peak_rss_gib": peak,
                      "loaded_weights_gib": params / 2**30}))


def measure(path: Path, dtype: str) -> dict:
    cat = cat_seconds(path)
    out = subprocess.run([sys.executable, __file__, "--child", str(path), dtype], check=True,
                         capture_output=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    size = path.stat().st_size / 2**30
    growth = got["peak_rss_gib"] - got["baseline_rss_gib"]
    return {"dtype": dtype, "cat_s": round(cat, 2), "load_s": round(got["load_s"], 2),
            "load_over_cat": round(got["load_s"] / cat, 2),
            "file_gib": round(size, 3), "loaded_weights_gib": round(got["loaded_weights_gib"], 3),
            "baseline_rss_gib": round(got["baseline_rss_gib"], 3), "peak_rss_gib": round(got["peak_rss_gib"], 3),
            "peak_growth_over_loaded_weights": round(growth / got["loaded_weights_gib"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["sdxl", "sd15", "tiny"], default="sdxl")
    ap.add_argument("--dir", default=None, help="where the checkpoint is written (default: a temp folder)")
    ap.add_argument("--fp32", action="store_true", help="also load the fp16 file as fp32 (2x the RAM)")
    ap.add_argument("--child", nargs=2, metavar=("PATH", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / f"{args.arch}-random.safetensors"
        t0 = time.perf_counter()
        write_checkpoint(args.arch, path)
        written = time.perf_counter() - t0
        rows = [measure(path, "float16")] + ([measure(path, "float32")] if args.fp32 else [])
    print(json.dumps({"arch": args.arch, "write_s": round(written, 1), "loads": rows}, indent=2))


if __name__ == "__main__":
    main()
