"""`animegen generate`, `animegen samplers`: the command line over `animegen.generate`.

Vocabulary: A1111's API field names in kebab case (`--cfg-scale`, `--negative-prompt`, `--batch-count`,
`--batch-size`; images = batch count x batch size, as A1111's n_iter x batch_size), the same in `eval run`.
The names before (`--cfg`, `--negative`, `--n` = the total number of images) still work, hidden from the
help and with a note, for one release. Everything cheap is checked before the model loads (`cli.checks`).
Images go where `generate.outputs.OutputLayout` puts them: A1111's tree by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from animegen.cli.checks import (
    DEVICE_HELP,
    DTYPE_HELP,
    Problems,
    check_controlnets,
    check_device_and_dtype,
    check_file,
    check_folder,
    check_hires_upscaler,
    check_inpaint_sources,
    check_loras,
    check_model,
    check_output_folder,
    check_preset,
    check_sampler,
    device_word,
)
from animegen.cli.common import user_errors
from animegen.generate.hires import DEFAULT_HIRES_UPSCALER, HIRES_UPSCALERS
from animegen.generate.request import (
    DEFAULT_CFG,
    DEFAULT_RNG,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    parse_lora_spec,
)

# command-line parameter -> GenerationRequest field: the settings that --from-png lets the command line override
REQUEST_OPTIONS = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "preset": "preset", "sampler": "sampler",
    "schedule_type": "schedule_type", "steps": "steps", "cfg_scale": "cfg_scale", "seed": "seed", "width": "width",
    "height": "height", "clip_skip": "clip_skip", "init_image": "init_image", "strength": "strength",
    "hires": "hires", "hires_scale": "hires_scale", "hires_steps": "hires_steps", "hires_denoise": "hires_denoise",
    "hires_upscaler": "hires_upscaler", "hires_resize_x": "hires_resize_x", "hires_resize_y": "hires_resize_y",
    "hires_sampler": "hires_sampler", "hires_schedule_type": "hires_schedule_type", "hires_prompt": "hires_prompt",
    "hires_negative_prompt": "hires_negative_prompt", "hires_cfg_scale": "hires_cfg_scale", "rng": "rng",
    "eta_noise_seed_delta": "eta_noise_seed_delta", "subseed": "subseed", "subseed_strength": "subseed_strength",
    "guidance_rescale": "guidance_rescale", "emphasis": "emphasis", "mask": "mask", "mask_blur": "mask_blur",
    "inpainting_fill": "inpainting_fill", "inpaint_full_res": "inpaint_full_res",
    "inpaint_full_res_padding": "inpaint_full_res_padding", "inpainting_mask_invert": "inpainting_mask_invert",
}
# old parameter (hidden, still accepted for one release) -> (its flag, the canonical parameter, its flag)
OLD_NAMES = {"negative": ("--negative", "negative_prompt", "--negative-prompt"),
             "cfg": ("--cfg", "cfg_scale", "--cfg-scale")}
OUT_HELP = ("Output root. Default layout a1111: OUT/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png (img2img-images "
            "for --init-image; grids in txt2img-grids / img2img-grids), numbering continued as A1111 does.")


def generate_command(
    ctx: typer.Context,
    prompt: Optional[str] = typer.Argument(None, help="Prompt (A1111 syntax: (emphasis:1.2), [less], BREAK, "
                                           "<lora:name:0.8>)."),
    model: str = typer.Option(..., "--model", "-m", help="Hub id, diffusers folder, or single .safetensors checkpoint."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="Negative prompt (default: the preset's)."),
    negative: Optional[str] = typer.Option(None, "--negative", hidden=True),
    preset: str = typer.Option("none", help="Prompt preset: animagine, dashanime, danbooru, none, or a user preset."),
    preset_file: Optional[Path] = typer.Option(None, help="TOML file with user presets."),
    sampler: Optional[str] = typer.Option(None, help=f"A1111 sampler name or alias (default: preset's, else "
                                          f"{DEFAULT_SAMPLER!r}; `animegen samplers` lists them)."),
    schedule_type: Optional[str] = typer.Option(None, help="A1111 'Schedule type' (Automatic = the sampler's "
                                                "default; Karras, Exponential, SGM Uniform, ...)."),
    steps: Optional[int] = typer.Option(None, help=f"Sampling steps (default: preset's, else {DEFAULT_STEPS})."),
    cfg_scale: Optional[float] = typer.Option(None, "--cfg-scale", help=f"CFG scale (default: preset's, else "
                                              f"{DEFAULT_CFG:g})."),
    cfg: Optional[float] = typer.Option(None, "--cfg", hidden=True),
    seed: int = typer.Option(-1, help="Seed; -1 picks one. Image k uses seed+k."),
    width: Optional[int] = typer.Option(None, help="Width, multiple of 8 (default: preset's, else 512 SD1 / 1024 SDXL)."),
    height: Optional[int] = typer.Option(None, help="Height, multiple of 8."),
    clip_skip: int = typer.Option(1, help="CLIP skip, A1111's meaning: 1 = no skip, 2 = penultimate layer."),
    lora: list[str] = typer.Option([], "--lora", help="LoRA file PATH[:WEIGHT]; repeatable."),
    lora_dir: Optional[Path] = typer.Option(None, help="Folder that resolves <lora:name:w> tags."),
    embeddings_dir: Optional[Path] = typer.Option(None, help="Folder of textual-inversion embeddings, used by "
                                                  "file name in either prompt (e.g. easynegative)."),
    batch_count: int = typer.Option(1, "--batch-count", min=1, help="Batches to run, one after another (A1111's "
                                    "n_iter); images = batch count x batch size."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Images per batch (one forward pass)."),
    n: Optional[int] = typer.Option(None, "--n", hidden=True),
    grid: bool = typer.Option(False, help="Also save a grid of all images."),
    init_image: Optional[Path] = typer.Option(None, help="img2img: start from this image."),
    strength: float = typer.Option(0.75, help="img2img denoising strength."),
    mask: Optional[Path] = typer.Option(None, help="Inpainting: a mask for --init-image, white = regenerate, black "
                                        "= keep (a transparent mask: its alpha); resized to the image's size."),
    mask_blur: int = typer.Option(4, help="Inpainting: A1111's 'Mask blur', Gaussian sigma of the mask's edge in "
                                  "pixels (0 = a hard edge)."),
    inpainting_fill: Optional[str] = typer.Option(None, help="Inpainting: A1111's 'Masked content': fill, original, "
                                                  "latent noise, latent nothing, or 0-3 (default original; fill "
                                                  "with --outpaint)."),
    inpaint_full_res: bool = typer.Option(False, "--inpaint-full-res/--no-inpaint-full-res",
                                          help="Inpaint area 'Only masked': sample the mask's box (plus the "
                                          "padding) at --width x --height, then paste it back."),
    inpaint_full_res_padding: int = typer.Option(32, help="Only masked: pixels added around the mask's box."),
    inpainting_mask_invert: bool = typer.Option(False, help="Mask mode 'Inpaint not masked': regenerate the "
                                                "black part of the mask instead."),
    outpaint: Optional[str] = typer.Option(None, metavar="LEFT,RIGHT,TOP,BOTTOM", help="Outpainting: grow "
                                           "--init-image by these pixels (its edge colours repeated) and inpaint "
                                           "the new border (Masked content fill unless --inpainting-fill); "
                                           "--width/--height default to the new size."),
    adetailer: list[str] = typer.Option([], "--adetailer", metavar="MODEL[:PROMPT]", help="ADetailer pass: "
                                        "inpaint what this ONNX YOLOv8 detector finds (a file, or a name in "
                                        "--adetailer-dir, e.g. face_yolov8n) with its own prompt (default the "
                                        "image's); repeatable, one pass each, in order."),
    adetailer_dir: Optional[Path] = typer.Option(None, help="Folder of ONNX detectors --adetailer names."),
    ad_confidence: float = typer.Option(0.3, help="ADetailer: drop detections scoring at most this."),
    ad_denoise: float = typer.Option(0.4, help="ADetailer: denoising strength of each detection's inpaint."),
    controlnet: list[str] = typer.Option([], "--controlnet", metavar="MODEL:IMAGE[:WEIGHT]", help="ControlNet "
                                         "unit: a ControlNet (.safetensors file or diffusers folder, or a name in "
                                         "--controlnet-dir, e.g. control_v11p_sd15_canny) guided by the control "
                                         "IMAGE at WEIGHT (default 1); repeatable, one unit each."),
    controlnet_dir: Optional[Path] = typer.Option(None, help="Folder of ControlNets --controlnet names."),
    controlnet_module: str = typer.Option("none", help="ControlNet preprocessor run on every unit's image: none "
                                          "(the image is the control map), canny, threshold, invert, "
                                          "tile_resample, ..."),
    controlnet_start: float = typer.Option(0.0, help="ControlNet: step fraction from which the units act."),
    controlnet_end: float = typer.Option(1.0, help="ControlNet: step fraction after which they stop."),
    control_mode: str = typer.Option("Balanced", help="ControlNet control mode: Balanced, \"My prompt is more "
                                     "important\" or \"ControlNet is more important\" (or 0, 1, 2)."),
    hires: bool = typer.Option(False, help="Run the hires fix even at --hires-scale 1 (on anyway with a scale > 1 "
                               "or a --hires-resize-x/-y)."),
    hires_scale: float = typer.Option(1.0, help="Hires fix upscale factor (1 = off)."),
    hires_steps: int = typer.Option(0, help="Hires fix steps, run exactly (0 = same as --steps)."),
    hires_denoise: float = typer.Option(0.5, help="Hires fix denoising strength."),
    hires_upscaler: str = typer.Option(DEFAULT_HIRES_UPSCALER, help=f"Hires upscaler: {', '.join(HIRES_UPSCALERS)}, "
                                       "or a model upscaler: a file's name (stem) in --upscaler-dir, or its path."),
    upscaler_dir: Optional[Path] = typer.Option(None, help="Folder of model upscalers (ESRGAN / Real-ESRGAN / SRVGG "
                                                ".safetensors; .pth with --allow-pickle) --hires-upscaler names."),
    hires_resize_x: int = typer.Option(0, help="Hires fix: resize to this width instead of --hires-scale (0 = "
                                       "from the height's aspect; both set: cover and centre-crop, as A1111)."),
    hires_resize_y: int = typer.Option(0, help="Hires fix: resize to this height (0 = from the width's aspect)."),
    hires_sampler: Optional[str] = typer.Option(None, help="Hires pass sampler (default: --sampler's)."),
    hires_schedule_type: Optional[str] = typer.Option(None, help="Hires pass schedule type (default: the first "
                                                      "pass's)."),
    hires_prompt: str = typer.Option("", help="Hires pass prompt (default: the prompt)."),
    hires_negative_prompt: str = typer.Option("", help="Hires pass negative prompt (default: the negative)."),
    hires_cfg_scale: Optional[float] = typer.Option(None, help="Hires pass CFG scale (default: --cfg-scale's)."),
    subseed: int = typer.Option(-1, help="A1111's variation seed (-1 picks one; image k uses subseed+k)."),
    subseed_strength: float = typer.Option(0.0, help="Variation seed strength (0 = off)."),
    guidance_rescale: float = typer.Option(0.0, help="CFG rescale phi (Lin et al. 2023; infotext 'Rescale CFG', as "
                                           "Forge): 0 = off, 0.7 the usual v-prediction value."),
    emphasis: str = typer.Option("Original", help="A1111 emphasis mode: Original, No norm, Ignore, None."),
    rng: Optional[str] = typer.Option(None, help=f"Noise source, A1111's 'RNG': GPU, CPU or NV (default {DEFAULT_RNG}; "
                                      "GPU without CUDA draws NV, the same numbers; CPU is animegen's old noise)."),
    eta_noise_seed_delta: Optional[int] = typer.Option(None, help="A1111's ENSD: seed offset of ancestral noise "
                                                       "(e.g. 31337; default 0 = off)."),
    out: Path = typer.Option(Path("outputs"), help=OUT_HELP),
    layout: str = typer.Option("a1111", help="Output layout: a1111 (dated folders, see --out) or flat (every "
                               "image directly in --out, as animegen wrote before)."),
    from_png: Optional[Path] = typer.Option(None, help="Re-run the generation recorded in this PNG's infotext; "
                                       "settings given with it (PROMPT, --seed, --steps, ...) override it."),
    vae: Optional[str] = typer.Option(None, help="VAE override: folder or single file."),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
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
    from animegen.generate.outputs import LAYOUTS, OutputLayout

    with user_errors():
        problems = Problems()
        _take_old_names(ctx, problems)
        total = _image_count(ctx, problems)
        if layout not in LAYOUTS:
            problems.add(f"--layout {layout}", f"use one of: {', '.join(LAYOUTS)}")
            layout = "a1111"
        request = _build_request(ctx, problems, total)
        check_model(problems, model, allow_pickle)
        check_file(problems, "--vae", vae)
        check_folder(problems, "--embeddings-dir", embeddings_dir)
        check_preset(problems, preset, preset_file)
        specs = []
        with problems.catch("--lora"):
            specs = [parse_lora_spec(x) for x in lora]
        if request is not None:
            check_sampler(problems, "--sampler", request.sampler, request.schedule_type, "--schedule-type")
            check_sampler(problems, "--hires-sampler", request.hires_sampler, request.hires_schedule_type,
                          "--hires-schedule-type")
            from_files = [Path(p).stem for p, _ in specs if Path(p).is_file()] if from_png is not None else []
            check_loras(problems, specs, [request.prompt, request.hires_prompt], lora_dir, allow_pickle,
                        also_known=from_files)
            check_hires_upscaler(problems, request.hires_upscaler, upscaler_dir, allow_pickle)
        check_device_and_dtype(problems, device, dtype)
        outputs = OutputLayout(out, layout)  # type: ignore[arg-type]
        kind = "img2img" if init_image is not None else "txt2img"
        check_output_folder(problems, "--out", out, outputs.folder(kind))
        problems.raise_if_any()
        _note_flat_folder(ctx, out)

        images = _generate(request, model=model, vae=vae, device=device, dtype=dtype, allow_pickle=allow_pickle,
                           lora_dir=lora_dir, preset_file=preset_file, embeddings_dir=embeddings_dir,
                           upscaler_dir=upscaler_dir, adetailer_dir=adetailer_dir, nan_check=nan_check, specs=specs if from_png is not None else [],
                           speedups=dict(channels_last=channels_last, fuse_qkv=fuse_qkv, compile=compile,
                                         vae_tiling=vae_tiling))
        for img in images:
            typer.echo(f"saved {outputs.save(img, kind)}")
        if grid and len(images) > 1:
            typer.echo(f"saved {outputs.save(_grid(images), kind, grid=True)}")


def _from_user(ctx: typer.Context, name: str) -> bool:
    """Whether parameter `name` was set on the command line (or by its environment variable)."""
    source = ctx.get_parameter_source(name)  # by name: typer may bring its own copy of click's enum
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _take_old_names(ctx: typer.Context, problems: Problems) -> None:
    """Move a value given under an old option name to its canonical parameter, with a note."""
    for old, (old_flag, new, new_flag) in OLD_NAMES.items():
        if not _from_user(ctx, old):
            continue
        if _from_user(ctx, new) and ctx.params[new] != ctx.params[old]:
            problems.add(old_flag, f"is the old name of {new_flag}; give one of them")
        typer.echo(f"note: {old_flag} is now {new_flag}; the old name goes in the next release", err=True)
        ctx.params[new] = ctx.params[old]


def _image_count(ctx: typer.Context, problems: Problems) -> int:
    """Images to make: batch count x batch size, or the old `--n` (the total, in batches of --batch-size)."""
    params = ctx.params
    if params["n"] is None:
        return params["batch_count"] * params["batch_size"]
    typer.echo("note: --n is now --batch-count (batches of --batch-size: images = batch count x batch size); "
               "the old name goes in the next release", err=True)
    if _from_user(ctx, "batch_count"):
        problems.add("--n", "is the old total of images; give --batch-count (and --batch-size) instead")
    if params["n"] < 1:
        problems.add(f"--n {params['n']}", "must be at least 1")
    return max(params["n"], 1)


def _given(ctx: typer.Context, field: str) -> bool:
    """Whether the request setting `field` was set on the command line (under its name or an old one)."""
    name = next(name for name, f in REQUEST_OPTIONS.items() if f == field)
    return _from_user(ctx, name) or any(_from_user(ctx, old) for old, (_, new, _) in OLD_NAMES.items() if new == name)


def _build_request(ctx: typer.Context, problems: Problems, total: int):
    """The request of the command line (or of --from-png's infotext, overridden); None if it cannot be built."""
    from animegen.generate import GenerationRequest, read_png_infotext, request_from_infotext

    params = ctx.params
    settings = {field: params[name] for name, field in REQUEST_OPTIONS.items() if params[name] is not None}
    if params["init_image"] is not None:
        from animegen.data.image_io import open_image

        settings.pop("init_image")
        if not Path(params["init_image"]).is_file():
            problems.add(f"--init-image {params['init_image']}", "no such file")
        else:
            with problems.catch(f"--init-image {params['init_image']}"):
                settings["init_image"] = open_image(params["init_image"])
    derived = (_inpaint_settings(ctx, problems, settings) | _detailer_settings(ctx, problems, settings)
               | _controlnet_settings(ctx, problems, settings))
    request = None
    from_png = params["from_png"]
    if from_png is not None:
        with problems.catch(f"--from-png {from_png}"):
            text = read_png_infotext(from_png)
            if text is None:
                raise ValueError("has no 'parameters' infotext to re-run")
            given = {field: value for field, value in settings.items() if _given(ctx, field) or field in derived}
            request = request_from_infotext(text, n=total, batch_size=params["batch_size"], **given)
            if given:  # what the command line says wins over the infotext, and the user is told so
                shown = ", ".join(f"{k}={'<image>' if k in ('init_image', 'mask') else repr(v)}"
                                  for k, v in given.items())
                typer.echo(f"--from-png: overriding the infotext with {shown}")
    elif params["prompt"] is None:
        problems.add("", "give a PROMPT, or --from-png FILE to re-run an image")
    else:
        with problems.catch("--lora"):
            loras = [parse_lora_spec(x) for x in params["lora"]]
            request = GenerationRequest(**settings, loras=loras, n=total, batch_size=params["batch_size"])
    if request is not None:
        with problems.catch(""):
            request.validate()
    return request


def _detailer_settings(ctx: typer.Context, problems: Problems, settings: dict) -> set[str]:
    """`--adetailer MODEL[:PROMPT]` units (with `--ad-confidence` / `--ad-denoise`), their detectors found now, before
    loading; returns {"detailers"} when given (they override `--from-png`'s ADetailer fields)."""
    params = ctx.params
    if not params["adetailer"]:
        return set()
    from animegen.generate.detailer import DetailerUnit, find_detector

    folder = params["adetailer_dir"]
    check_folder(problems, "--adetailer-dir", folder)
    units = []
    for spec in params["adetailer"]:
        model, _, prompt = spec.partition(":")
        with problems.catch(f"--adetailer {spec}"):
            find_detector(model, [folder] if folder is not None else [])
            unit = DetailerUnit(model=model, prompt=prompt, confidence=params["ad_confidence"],
                                denoise=params["ad_denoise"])
            unit.validate()
            units.append(unit)
    settings["detailers"] = tuple(units)
    return {"detailers"}


def _controlnet_settings(ctx: typer.Context, problems: Problems, settings: dict) -> set[str]:
    """`--controlnet MODEL:IMAGE[:WEIGHT]` units (with `--controlnet-module`, `--controlnet-start/-end` and
    `--control-mode` for all of them), models and images found now, before loading (`checks.check_controlnets`);
    returns {"controlnet_units"} when given (they override `--from-png`'s)."""
    params = ctx.params
    found = check_controlnets(problems, params["controlnet"], params["controlnet_dir"], params["controlnet_module"],
                              params["control_mode"], params["controlnet_start"], params["controlnet_end"])
    if not params["controlnet"]:
        return set()
    from animegen.data.image_io import open_image
    from animegen.generate.controlnet import ControlUnit

    mode = params["control_mode"]
    units = []
    for spec, model, image, weight in found:
        with problems.catch(f"--controlnet {spec}"):
            unit = ControlUnit(model=model, image=open_image(image), weight=weight,
                               guidance_start=params["controlnet_start"], guidance_end=params["controlnet_end"],
                               control_mode=int(mode) if mode.strip().isdigit() else mode,
                               preprocessor=params["controlnet_module"])
            units.append(unit)
    settings["controlnet_units"] = tuple(units)
    return {"controlnet_units"}


def _inpaint_settings(ctx: typer.Context, problems: Problems, settings: dict) -> set[str]:
    """`--mask` read (alpha kept), `--inpainting-fill` by name or number, and `--outpaint`'s canvas and mask in
    `settings`; returns the fields `--outpaint` set (they override `--from-png`'s infotext like given options)."""
    from animegen.generate.inpaint import inpainting_fill_name, outpaint_canvas

    params = ctx.params
    borders = check_inpaint_sources(problems, params["init_image"], params["mask"], params["outpaint"])
    if params["mask"] is not None:
        settings.pop("mask")
    if params["mask"] is not None and params["init_image"] is not None:  # else reported once, just above
        with problems.catch(f"--mask {params['mask']}"):
            settings["mask"] = _open_mask(params["mask"])
    fill = params["inpainting_fill"]
    if fill is not None:
        with problems.catch(f"--inpainting-fill {fill}"):
            settings["inpainting_fill"] = inpainting_fill_name(int(fill) if fill.strip().isdigit() else fill, "")
    if borders is None or "init_image" not in settings:
        return set()
    settings["init_image"], settings["mask"] = outpaint_canvas(settings["init_image"], *borders)
    derived = {"mask"}
    if fill is None:
        settings["inpainting_fill"] = "fill"
        derived.add("inpainting_fill")
    for side, size in zip(("width", "height"), settings["init_image"].size, strict=True):
        if params[side] is None and size % 8:
            problems.add(f"--outpaint {params['outpaint']}", f"makes the image {size} pixels in {side}, not a "
                         f"multiple of 8; add {-size % 8} more (or give --{side})")
        elif params[side] is None:
            settings[side] = size
            derived.add(side)
    return derived


def _open_mask(path: Path):
    """The `--mask` image as its file has it (a transparent mask's alpha is the mask: `inpaint.binary_mask`),
    checked as `--init-image` is (no such file, not an image, too large)."""
    from PIL import Image

    from animegen.data.image_io import read_image

    if not Path(path).is_file():
        raise ValueError("no such file")
    read_image(path)
    with Image.open(path) as image:
        image.load()
        return image.copy()


def _note_flat_folder(ctx: typer.Context, out: Path) -> None:
    """Tell a user whose --out holds animegen's old flat numbering where the new images go."""
    if ctx.params["layout"] != "a1111" or _from_user(ctx, "layout"):
        return
    if any(p.name[:5].isdigit() and p.suffix == ".png" for p in out.glob("[0-9]*-*.png")):
        typer.echo(f"note: {out} holds images numbered in the old flat layout; new ones go to its dated "
                   "txt2img-images/img2img-images folders (A1111's layout; --layout flat continues the old)",
                   err=True)


def _generate(request, *, model, vae, device, dtype, allow_pickle, lora_dir, preset_file, embeddings_dir,
              upscaler_dir, adetailer_dir, nan_check, specs, speedups):
    """Load the model (the slow part, after every check) and run the request with a progress bar."""
    from tqdm import tqdm

    from animegen.generate import Generator
    from animegen.generate.speed import SpeedupConfig

    generator = Generator(model, vae=vae, device=device_word(device), dtype=dtype, allow_pickle=allow_pickle,
                          lora_dir=lora_dir, preset_file=preset_file, speedups=SpeedupConfig(**speedups),
                          nan_check=nan_check, embeddings_dir=embeddings_dir, upscaler_dir=upscaler_dir)
    if adetailer_dir is not None:
        generator.detector_dirs = [adetailer_dir]
    for path, _ in specs:
        generator.register_lora(path)  # --from-png: names for the <lora:...> tags recorded in the prompt
    bar = tqdm(total=1, desc="generating", unit="step")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    images = generator(request, progress=progress)
    bar.close()
    return images


def _grid(images):
    """A1111's grid of the images (4 columns at most, blank-filled), carrying the first image's infotext."""
    from dataclasses import replace

    from diffusers.utils import make_image_grid

    cols = min(len(images), 4)
    rows = -(-len(images) // cols)
    blank = images[0].image.copy()
    blank.paste((0, 0, 0), (0, 0, *blank.size))
    tiles = [im.image for im in images] + [blank] * (rows * cols - len(images))
    return replace(images[0], image=make_image_grid(tiles, rows=rows, cols=cols))


def samplers_command() -> None:
    """List the A1111 1.10 sampler names animegen understands, their aliases and default schedule type."""
    from animegen.generate.sampler_names import SAMPLER_NAMES, SCHEDULE_NAMES

    for s in SAMPLER_NAMES.values():
        schedule = "(ignores Schedule type)" if s.kind == "timesteps" else \
            f"Automatic = {s.options.get('scheduler', 'uniform').replace('_', ' ').title()}"
        typer.echo(f"{s.name:<20} {schedule:<28} aliases: {', '.join(s.aliases)}")
    typer.echo(f"schedule types: {', '.join(SCHEDULE_NAMES)}")


def register(app: typer.Typer) -> None:
    """Add the generation commands to the main app."""
    app.command("generate")(generate_command)
    app.command("samplers")(samplers_command)
