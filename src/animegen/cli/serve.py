"""`animegen serve`: the A1111-compatible REST API and the Gradio web UI from one process."""

from __future__ import annotations

from pathlib import Path

import typer

from animegen.cli.checks import (
    DEVICE_HELP,
    DTYPE_HELP,
    Problems,
    check_device_and_dtype,
    check_file,
    check_folder,
    check_model,
    device_word,
)
from animegen.cli.common import error_line, fail


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the main app."""
    app.command("serve")(serve)


def serve(
    model: str = typer.Option(None, "--model", help="Model to load: hub id, diffusers folder, or single "
                              ".safetensors checkpoint (as for generate)."),
    model_dir: Path = typer.Option(None, "--model-dir", help="Folder of checkpoints the API may switch to."),
    lora_dir: Path = typer.Option(None, "--lora-dir", help="Folder of LoRAs usable as <lora:name:weight>."),
    embeddings_dir: Path = typer.Option(None, "--embeddings-dir",
                                        help="Folder of textual-inversion embeddings usable by name in prompts."),
    upscaler_dir: Path = typer.Option(None, "--upscaler-dir", help="Folder of model upscalers (ESRGAN / Real-ESRGAN "
                                      "/ SRVGG .safetensors) usable by file name, besides --model-dir's ESRGAN/ and "
                                      "RealESRGAN/."),
    controlnet_dir: Path = typer.Option(None, "--controlnet-dir", help="Folder of ControlNet models the A1111 "
                                        "ControlNet extension's API fields name (alwayson_scripts.controlnet)."),
    adetailer_dir: Path = typer.Option(None, "--adetailer-dir", help="Folder of ONNX detectors the ADetailer API "
                                       "fields name (alwayson_scripts.ADetailer)."),
    outputs_dir: Path = typer.Option(None, "--outputs-dir", help="Where the web UI saves its images, in A1111's "
                                     "layout (default ./outputs)."),
    vae: str = typer.Option(None, "--vae", help="VAE override (folder or .safetensors)."),
    device: str = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str = typer.Option(None, "--dtype", help=DTYPE_HELP),
    host: str = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="Port (default 7860; 0 picks a free one)."),
    listen: bool = typer.Option(False, "--listen", help="Bind 0.0.0.0; requires --api-auth or --api-token."),
    api_auth: str = typer.Option(None, "--api-auth", envvar="ANIMEGEN_API_AUTH",
                                 help="HTTP basic credentials user:pass[,user2:pass2]."),
    api_token: str = typer.Option(None, "--api-token", envvar="ANIMEGEN_API_TOKEN",
                                  help="Bearer token accepted instead of basic credentials."),
    max_queue: int = typer.Option(None, "--max-queue", help="Waiting jobs before answering 429 (default 16)."),
    ui: bool = typer.Option(None, "--ui/--no-ui", help="Mount the Gradio web UI at / (default on)."),
    nan_check: bool = typer.Option(None, "--nan-check/--no-nan-check",
                                   help="Refuse images with NaN/inf latents or pixels (default on)."),
    config: Path = typer.Option(None, "--config", help="TOML file with a [serve] table (flags override it)."),
) -> None:
    """Serve AUTOMATIC1111's /sdapi/v1 API (docs at /docs) and a web UI at / from one model worker."""
    from pydantic import ValidationError

    from animegen.serve.config import ServeConfig

    values = {
        "model": model, "model_dir": model_dir, "lora_dir": lora_dir, "embeddings_dir": embeddings_dir,
        "upscaler_dir": upscaler_dir, "controlnet_dir": controlnet_dir, "adetailer_dir": adetailer_dir,
        "outputs_dir": outputs_dir,
        "vae": vae, "device": device_word(device),
        "dtype": dtype, "host": host, "port": port, "listen": listen or None, "api_auth": api_auth,
        "api_token": api_token, "max_queue": max_queue, "ui": ui,
        "nan_check": nan_check,
    }
    try:
        if config is not None:
            if not config.is_file():
                raise typer.BadParameter(f"config file {config} not found", param_hint="--config")
            cfg = ServeConfig.from_toml(config, **values)
        else:
            if not model:
                raise typer.BadParameter("give the model to serve, e.g. --model ./my-model.safetensors or a hub id "
                                         "such as cagliostrolab/animagine-xl-3.1", param_hint="--model")
            cfg = ServeConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            flag = f"--{where.replace('_', '-')}: " if where else ""
            problems.append(f"{flag}{error['msg'].removeprefix('Value error, ')}")
        fail("; ".join(problems))

    problems = Problems()  # everything cheap, before the model loads
    for name, folder in (("--model-dir", cfg.model_dir), ("--lora-dir", cfg.lora_dir),
                         ("--embeddings-dir", cfg.embeddings_dir), ("--upscaler-dir", cfg.upscaler_dir),
                         ("--controlnet-dir", cfg.controlnet_dir), ("--adetailer-dir", cfg.adetailer_dir)):
        check_folder(problems, name, None if folder is None else Path(folder))
    check_model(problems, cfg.model, allow_pickle=False, option="cannot load --model")
    check_file(problems, "--vae", cfg.vae)
    check_device_and_dtype(problems, cfg.device, cfg.dtype)
    problems.raise_if_any()

    import uvicorn

    from animegen.serve.app import create_app, uvicorn_options

    typer.echo(f"loading {cfg.model} ...")
    try:
        app = create_app(cfg)
    except (ValueError, OSError) as exc:
        fail(f"cannot load --model {cfg.model}: {error_line(exc)}")
    where = f"http://{'127.0.0.1' if cfg.host == '0.0.0.0' else cfg.host}:{cfg.port}"
    ui_line = f"web UI: {where}/   " if cfg.ui else ""
    typer.echo(f"{ui_line}API: {where}/sdapi/v1   docs: {where}/docs")
    uvicorn.run(**uvicorn_options(app, cfg))
