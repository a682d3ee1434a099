"""`animegen generate`, `animegen samplers`: the command line over `animegen.generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from animegen.cli.common import fail, user_errors
from animegen.core.files import atomic_path, writable_folder
from animegen.generate.hires import DEFAULT_HIRES_UPSCALER, HIRES_UPSCALERS
from animegen.generate.request import DEFAULT_CFG, DEFAULT_RNG, DEFAULT_SAMPLER, DEFAULT_STEPS, parse_lora_spec

# command-line parameter -> GenerationRequest field: the settings that --from-png lets the command line override
REQUEST_OPTIONS = {
    "prompt": "prompt", "negative": "negative_prompt", "preset": "preset", "sampler": "sampler",
    "schedule_type": "schedule_type", "steps": "steps", "cfg": "cfg_scale", "seed": "seed", "width": "width",
    "height": "height", "clip_skip": "clip_skip", "init_image": "init_image", "strength": "strength",
    "hires": "hires", "hires_scale": "hires_scale", "hires_steps": "hires_steps", "hires_denoise": "hires_denoise",
    "hires_upscaler": "hires_upscaler", "hires_resize_x": "hires_resize_x", "hires_resize_y": "hires_resize_y",
    "hires_sampler": "hires_sampler", "hires_schedule_type": "hires_schedule_type", "hires_prompt": "hires_prompt",
    "hires_negative_prompt": "hires_negative_prompt", "hires_cfg_scale": "hires_cfg_scale", "rng": "rng",
    "eta_noise_seed_delta": "eta_noise_seed_delta", "subseed": "subseed", "subseed_strength": "subseed_strength",
    "guidance_rescale": "guidance_rescale", "emphasis": "emphasis",
}


def _next_index(out: Path) -> int:
    """A1111 numbers images 00000-SEED.png, continuing after the highest number in the folder."""
    numbers = [int(p.name.split("-", 1)[0]) for p in out.glob("*.png") if p.name.split("-", 1)[0].isdigit()]
    return max(numbers, default=-1) + 1


def generate_command(
    ctx: typer.Context,
    prompt: Optional[str] = typer.Argument(None, help="Prompt (A1111 syntax: (emphasis:1.2), [less], BREAK, <lora:name:0.8>)."),
    model: str = typer.Option(..., "--model", "-m", help="Hub id, diffusers folder, or single .safetensors checkpoint."),
    negative: str = typer.Option("", "--negative", help="Negative prompt (default: the preset's)."),
    preset: str = typer.Option("none", help="Prompt preset: animagine, dashanime, danbooru, none, or a user preset."),
    preset_file: Optional[Path] = typer.Option(None, help="TOML file with user presets."),
    sampler: Optional[str] = typer.Option(None, help=f"A1111 sampler name (default: preset's, else {DEFAULT_SAMPLER!r})."),
    schedule_type: Optional[str] = typer.Option(None, help="A1111 'Schedule type' (Automatic = the sampler's "
                                                "default; Karras, Exponential, SGM Uniform, ...)."),
    steps: Optional[int] = typer.Option(None, help=f"Sampling steps (default: preset's, else {DEFAULT_STEPS})."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help=f"CFG scale (default: preset's, else {DEFAULT_CFG:g})."),
    seed: int = typer.Option(-1, help="Seed; -1 picks one. Image k uses seed+k."),
    width: Optional[int] = typer.Option(None, help="Width, multiple of 8 (default: preset's, else 512 SD1 / 1024 SDXL)."),
    height: Optional[int] = typer.Option(None, help="Height, multiple of 8."),
    clip_skip: int = typer.Option(1, help="CLIP skip, A1111's meaning: 1 = no skip, 2 = penultimate layer."),
    lora: list[str] = typer.Option([], "--lora", help="LoRA file PATH[:WEIGHT]; repeatable."),
    lora_dir: Optional[Path] = typer.Option(None, help="Folder that resolves <lora:name:w> tags."),
    embeddings_dir: Optional[Path] = typer.Option(None, help="Folder of textual-inversion embeddings, used by "
                                                  "file name in either prompt (e.g. easynegative)."),
    n: int = typer.Option(1, "--n", help="Number of images."),
    batch_size: int = typer.Option(1, help="Images per forward pass."),
    grid: bool = typer.Option(False, help="Also save a grid of all images."),
    init_image: Optional[Path] = typer.Option(None, help="img2img: start from this image."),
    strength: float = typer.Option(0.75, help="img2img denoising strength."),
    hires: bool = typer.Option(False, help="Run the hires fix even at --hires-scale 1 (on anyway with a scale > 1 "
                               "or a --hires-resize-x/-y)."),
    hires_scale: float = typer.Option(1.0, help="Hires fix upscale factor (1 = off)."),
    hires_steps: int = typer.Option(0, help="Hires fix steps, run exactly (0 = same as --steps)."),
    hires_denoise: float = typer.Option(0.5, help="Hires fix denoising strength."),
    hires_upscaler: str = typer.Option(DEFAULT_HIRES_UPSCALER, help=f"Hires upscaler: {', '.join(HIRES_UPSCALERS)}."),
    hires_resize_x: int = typer.Option(0, help="Hires fix: resize to this width instead of --hires-scale (0 = "
                                       "from the height's aspect; both set: cover and centre-crop, as A1111)."),
    hires_resize_y: int = typer.Option(0, help="Hires fix: resize to this height (0 = from the width's aspect)."),
    hires_sampler: Optional[str] = typer.Option(None, help="Hires pass sampler (default: --sampler's)."),
    hires_schedule_type: Optional[str] = typer.Option(None, help="Hires pass schedule type (default: the first "
                                                      "pass's)."),
    hires_prompt: str = typer.Option("", help="Hires pass prompt (default: the prompt)."),
    hires_negative_prompt: str = typer.Option("", help="Hires pass negative prompt (default: the negative)."),
    hires_cfg_scale: Optional[float] = typer.Option(None, help="Hires pass CFG scale (default: --cfg's)."),
    subseed: int = typer.Option(-1, help="A1111's variation seed (-1 picks one; image k uses subseed+k)."),
    subseed_strength: float = typer.Option(0.0, help="Variation seed strength (0 = off)."),
    guidance_rescale: float = typer.Option(0.0, help="CFG rescale phi (Lin et al. 2023; infotext 'Rescale CFG', as "
                                           "Forge): 0 = off, 0.7 the usual v-prediction value."),
    emphasis: str = typer.Option("Original", help="A1111 emphasis mode: Original, No norm, Ignore, None."),
    rng: Optional[str] = typer.Option(None, help=f"Noise source, A1111's 'RNG': GPU, CPU or NV (default {DEFAULT_RNG}; "
                                      "GPU without CUDA draws NV, the same numbers; CPU is animegen's old noise)."),
    eta_noise_seed_delta: Optional[int] = typer.Option(None, help="A1111's ENSD: seed offset of ancestral noise "
                                                       "(e.g. 31337; default 0 = off)."),
    out: Path = typer.Option(Path("outputs"), help="Output folder."),
    from_png: Optional[Path] = typer.Option(None, help="Re-run the generation recorded in this PNG's infotext; "
                                       "settings given with it (PROMPT, --seed, --steps, ...) override it."),
    vae: Optional[str] = typer.Option(None, help="VAE override: folder or single file."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 … (default: cuda if available)."),
    dtype: str = typer.Option("auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, fp16, bf16."),
    allow_pickle: bool = typer.Option(False, help="Allow pickled .ckpt/.pt/.bin checkpoints and embeddings "
                                      "(tensors only)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="UNet/VAE memory format (default: on with CUDA)."),
    fuse_qkv: Optional[bool] = typer.Option(None, "--fuse-qkv/--no-fuse-qkv",
                                            help="Fused attention projections (default: on with CUDA)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                           help="torch.compile the UNet (slow first call, cached after)."),
    vae_tiling: Optional[bool] = typer.Option(None, "--vae-tiling/--no-vae-tiling",
                                              help="Decode large images tile by tile to save memory."),
    nan_check: bool = typer.Option(True, "--nan-check/--no-nan-check",
                                   help="Refuse images whose latents or pixels hold NaN/inf (A1111's NaN check)."),
) -> None:
    """Generate images; each PNG carries A1111-compatible infotext."""
    from tqdm import tqdm

    from animegen.data.image_io import open_image
    from animegen.generate import GenerationRequest, Generator, read_png_infotext, request_from_infotext, save_png

    with user_errors():
        writable_folder(out)  # a read-only --out fails now, not after the images are made
        settings = {field: ctx.params[name] for name, field in REQUEST_OPTIONS.items() if ctx.params[name] is not None}
        if init_image is not None:
            settings["init_image"] = open_image(init_image)
        if from_png is not None:
            text = read_png_infotext(from_png)
            if text is None:
                fail(f"{from_png} has no 'parameters' infotext to re-run")
            given = {field: value for field, value in settings.items() if _given(ctx, field)}
            if given:  # what the command line says wins over the infotext, and the user is told so
                shown = ", ".join(f"{k}={'<image>' if k == 'init_image' else repr(v)}" for k, v in given.items())
                typer.echo(f"--from-png: overriding the infotext with {shown}")
            request = request_from_infotext(text, n=n, batch_size=batch_size, **given)
        elif prompt is None:
            fail("give a PROMPT, or --from-png FILE to re-run an image")
        else:
            request = GenerationRequest(**settings, loras=[parse_lora_spec(x) for x in lora], n=n,
                                        batch_size=batch_size)
        request.validate()
        from animegen.generate.speed import SpeedupConfig

        speedups = SpeedupConfig(channels_last=channels_last, fuse_qkv=fuse_qkv, compile=compile,
                                 vae_tiling=vae_tiling)
        generator = Generator(model, vae=vae, device=device, dtype=dtype, allow_pickle=allow_pickle,
                              lora_dir=lora_dir, preset_file=preset_file, speedups=speedups,
                              nan_check=nan_check, embeddings_dir=embeddings_dir)
        if from_png is not None:
            for path, _ in (parse_lora_spec(x) for x in lora):
                generator.register_lora(path)  # names for the <lora:...> tags recorded in the prompt
        bar = tqdm(total=1, desc="generating", unit="step")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        images = generator(request, progress=progress)
        bar.close()
        index = _next_index(out)
        for i, img in enumerate(images):
            path = save_png(img, out / f"{index + i:05d}-{img.seed}.png")
            typer.echo(f"saved {path}")
        if grid and len(images) > 1:
            from diffusers.utils import make_image_grid

            cols = min(len(images), 4)
            rows = -(-len(images) // cols)
            blank = images[0].image.copy()
            blank.paste((0, 0, 0), (0, 0, *blank.size))
            tiles = [im.image for im in images] + [blank] * (rows * cols - len(images))
            grid_image = make_image_grid(tiles, rows=rows, cols=cols)
            grid_path = out / f"grid-{index:05d}.png"
            with atomic_path(grid_path) as tmp:
                grid_image.save(tmp, format="PNG")
            typer.echo(f"saved {grid_path}")


def _given(ctx: typer.Context, field: str) -> bool:
    """Whether the request setting `field` was set on the command line (or by its environment variable)."""
    name = next(name for name, f in REQUEST_OPTIONS.items() if f == field)
    source = ctx.get_parameter_source(name)  # by name: typer may bring its own copy of click's enum
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def samplers_command() -> None:
    """List the A1111 1.10 sampler names animegen understands, their aliases and default schedule type."""
    from animegen.generate.samplers import SAMPLERS
    from animegen.generate.schedules import SCHEDULE_TYPES

    for s in SAMPLERS.values():
        schedule = "(ignores Schedule type)" if s.kind == "timesteps" else \
            f"Automatic = {s.options.get('scheduler', 'uniform').replace('_', ' ').title()}"
        typer.echo(f"{s.name:<20} {schedule:<28} aliases: {', '.join(s.aliases)}")
    typer.echo(f"schedule types: {', '.join(SCHEDULE_TYPES)}")


def register(app: typer.Typer) -> None:
    """Add the generation commands to the main app."""
    app.command("generate")(generate_command)
    app.command("samplers")(samplers_command)
