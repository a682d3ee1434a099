"""`animegen upscale IMAGE... --upscaler PATH_OR_NAME --scale 4 --out DIR`: upscale finished images.

The work is `animegen.models.upscalers.upscale_image` (ESRGAN-family model files, or the built-in Lanczos /
Nearest / None); this module only checks, reads and writes. Torch and the networks load inside the command
(`animegen --help` stays light). Everything is checked before the first image is upscaled: the upscaler (a
model file is loaded once, and a `.pth` is refused without --allow-pickle), the output folder (writable), and
the target names (`OUT/<input stem>.png`; two inputs with one stem, or an existing file without --overwrite,
are errors). Each PNG is written atomically with A1111's `postprocessing` text. User errors are one line,
exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from animegen.cli.common import fail, user_errors


def upscale_command(
    images: list[Path] = typer.Argument(..., help="Images to upscale."),
    upscaler: str = typer.Option(..., "--upscaler", help="Lanczos, Nearest, None, or an ESRGAN / Real-ESRGAN / "
                                                        "SRVGG .safetensors (or .pth with --allow-pickle) file."),
    scale: float = typer.Option(4.0, "--scale", help="Upscale factor; sides are rounded down to multiples of 8."),
    out: Path = typer.Option(..., "--out", help="Folder for the upscaled PNGs (OUT/<input name>.png)."),
    tile: int = typer.Option(192, "--tile", help="Tile size in input pixels for model upscalers (0: no tiling)."),
    overlap: int = typer.Option(8, "--overlap", help="Context pixels around each tile."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                      help="Read .pth/.pt upscalers (tensors only, weights_only=True)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Upscale images with a model upscaler (ESRGAN family, tiled) or a built-in one."""
    with user_errors():
        from animegen.core.files import atomic_path, writable_folder
        from animegen.data.image_io import open_image
        from animegen.generate.upscale import postprocess_infotext
        from animegen.models.upscalers import builtin_upscaler, load_upscaler, upscale_image

        if not scale > 0:
            fail(f"--scale must be > 0, got {scale}")
        if tile < 0 or overlap < 0:
            fail(f"--tile and --overlap must be >= 0, got {tile} and {overlap}")
        name = builtin_upscaler(upscaler)
        if name is None:
            path = Path(upscaler)
            if not path.is_file():
                fail(f"--upscaler {upscaler!r} is neither Lanczos, Nearest, None nor a file; give the path of an "
                     "ESRGAN-family .safetensors (or .pth with --allow-pickle)")
            net = load_upscaler(path, allow_pickle=allow_pickle)  # refuses or fails here, before any image
            name = path.stem
            typer.echo(f"upscaler {path.name}: {net.describe()}")
        targets: dict[Path, Path] = {}
        for image_path in images:
            target = out / f"{image_path.stem}.png"
            if target in targets.values():
                fail(f"{image_path} and another input would both be written to {target}; rename one")
            if target.exists() and not overwrite:
                fail(f"{target} already exists; pass --overwrite or choose another --out")
            targets[image_path] = target
        writable_folder(out)
        info = {"Postprocess upscale by": scale, "Postprocess upscaler": name}
        for image_path, target in targets.items():
            source = open_image(image_path)
            result = upscale_image(source, upscaler, scale, tile=tile, overlap=overlap, allow_pickle=allow_pickle)
            from PIL import PngImagePlugin

            pnginfo = PngImagePlugin.PngInfo()
            pnginfo.add_itxt("postprocessing", postprocess_infotext(info))
            with atomic_path(target) as tmp:
                result.save(tmp, format="PNG", pnginfo=pnginfo)
            typer.echo(f"wrote {target} ({source.width}x{source.height} -> {result.width}x{result.height})")


def register(app: typer.Typer) -> None:
    """Add `animegen upscale` to the main app."""
    app.command("upscale")(upscale_command)


__all__ = ["register", "upscale_command"]
