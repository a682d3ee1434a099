"""Sampler fidelity table (not a test): animegen vs the independent A1111 1.10 reference, issue #13.

    python bench/sampler_fidelity.py                # toy network: every sampler x schedule x 4/10/20 steps
    python bench/sampler_fidelity.py --tiny-unet    # plus the tiny SD1.5 UNet, Automatic schedule
    python bench/sampler_fidelity.py --markdown     # the table as Markdown

Each cell is max |ours - A1111| / max |A1111| over the final latents of two images (CPU noise, one
generator per image seed; SDE samplers: one Brownian tree per seed). The reference lives in
tests/generate/a1111_reference.py and shares no code with animegen's samplers. DDIM, PLMS and UniPC
ignore the schedule type (as in A1111): their row is one value per step count.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "generate"))

import a1111_reference as ref
from sampler_harness import ours, reference, relative_difference

STEPS = (4, 10, 20)


def toy_table() -> dict[tuple[str, str, int], float]:
    table = {}
    for sampler, (default, _, _) in ref.A1111_SAMPLERS.items():
        labels = ["Automatic"] if default is None else ref.SCHEDULES
        for label in labels:
            for steps in STEPS:
                table[sampler, label, steps] = relative_difference(ours(sampler, label, steps),
                                                                   reference(sampler, label, steps))
    return table


def tiny_unet_table() -> dict[tuple[str, int], float]:
    import torch
    from diffusers import StableDiffusionPipeline
    from pipeline_reference import a1111_images

    from animegen.generate.kpipeline import KPipeline
    from animegen.generate.samplers import resolve_sampler
    from animegen.models.tiny import build_tiny_pipeline
    from animegen.prompts.encode import encode_prompts

    pipe = build_tiny_pipeline("sd15")
    assert isinstance(pipe, StableDiffusionPipeline)
    torch.set_num_threads(1)
    conditioning = encode_prompts(pipe, "1girl, red hair", "lowres")
    table = {}
    for sampler in ref.A1111_SAMPLERS:
        for steps in STEPS:
            _, want = a1111_images(pipe, sampler, "1girl, red hair", "lowres", steps, 6.0, 77, width=64, height=64)
            got = KPipeline(pipe, is_sdxl=False).txt2img(resolve_sampler(sampler), conditioning, [77], width=64,
                                                         height=64, steps=steps, cfg_scale=6.0)
            table[sampler, steps] = relative_difference(got, want)
    return table


def render(table, markdown: bool) -> str:
    labels = ref.SCHEDULES
    lines = []
    for steps in STEPS:
        head = ["sampler \\ schedule"] + labels
        rows = []
        for sampler, (default, _, _) in ref.A1111_SAMPLERS.items():
            cells = [f"{table[sampler, 'Automatic' if default is None else label, steps]:.1e}" for label in labels]
            rows.append([sampler] + cells)
        lines.append(f"\n{steps} steps (max relative latent difference)")
        if markdown:
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            lines += ["  ".join(f"{c:>16}" for c in head)] + ["  ".join(f"{c:>16}" for c in r) for r in rows]
    worst = max(table.items(), key=lambda kv: kv[1])
    lines.append(f"\nworst: {worst[0]} -> {worst[1]:.2e} (target < 1e-3)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-unet", action="store_true", help="also compare on the tiny SD1.5 UNet")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(render(toy_table(), args.markdown))
    if args.tiny_unet:
        table = tiny_unet_table()
        print("\ntiny SD1.5 UNet, Automatic schedule")
        for sampler in ref.A1111_SAMPLERS:
            print(f"{sampler:>18}  " + "  ".join(f"{s} steps: {table[sampler, s]:.1e}" for s in STEPS))
        print(f"worst: {max(table.values()):.2e}")


if __name__ == "__main__":
    main()
