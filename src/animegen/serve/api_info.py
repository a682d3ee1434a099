"""The A1111 `/sdapi/v1/*` routes that list what the server has and report its state, in A1111 1.10's shapes.

Every name comes from its home: schedule types `generate.schedules`, upscalers `models.upscalers.listing`
through `serve.catalog` (the built-ins, then the `.safetensors` models of --model-dir's ESRGAN/ and RealESRGAN/
and --upscaler-dir, with A1111's fields and the scale their architecture detects), latent upscale modes
`generate.hires`, styles `prompts.presets` (animegen's prompt presets are its styles; a style's prompt holds
`{prompt}` where the user's prompt goes, as A1111 styles do; a tag-ordering preset such as animagine also moves
count tags like 1girl first, which a style string cannot express), VAEs `serve.catalog`.

Where animegen has nothing of a kind A1111 lists (hypernetworks, face restorers, A1111's downloadable Real-ESRGAN
models, scripts,
extensions) the route answers an empty list, which is the truth, rather than 404. The refresh routes answer
null, as A1111's, and do nothing: the catalog and the embedding library read their folders on every listing.
`/cmd-flags` gives the server's configuration under A1111's flag names where one exists (animegen's own
names otherwise) and never the credentials: `api_auth` / `api_token` read "***" when set.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter

from animegen.serve import schemas
from animegen.serve.service import ServeService

# A1111 1.10 sd_schedulers' `need_inner_model` flags (the schedules that read the model's own sigma table)
_NEED_INNER_MODEL = frozenset({"Uniform", "SGM Uniform", "Simple", "Normal", "DDIM", "Beta"})


def cmd_flags(service: ServeService) -> dict[str, Any]:
    """A1111's `vars(cmd_opts)` for the flags animegen has, credentials hidden."""
    config = service.config

    def path(value) -> str | None:
        return None if value is None else str(value)

    return {
        "api": True,
        "nowebui": not config.ui,
        "listen": config.listen,
        "server_name": config.host,
        "port": config.port,
        "api_auth": "***" if config.api_auth else None,
        "api_token": "***" if config.api_token else None,
        "ckpt": config.model,
        "ckpt_dir": path(config.model_dir),
        "lora_dir": path(config.lora_dir),
        "esrgan_models_path": path(config.upscaler_dir),
        "embeddings_dir": path(config.embeddings_dir),
        "vae_path": config.vae,
        "disable_nan_check": not config.nan_check,
        "device": config.device,
        "dtype": config.dtype,
        "max_queue": config.max_queue,
        "limits": config.limits.model_dump(),
    }


def memory() -> dict[str, dict[str, Any]]:
    """A1111's `/sdapi/v1/memory`: RAM (this process's resident set against the machine's total) and CUDA."""
    try:
        import psutil

        rss = psutil.Process(os.getpid()).memory_info().rss
        total = psutil.virtual_memory().total
        ram: dict[str, Any] = {"free": total - rss, "used": rss, "total": total}
    except Exception as exc:  # noqa: BLE001 - A1111 reports the error in the field instead of failing
        ram = {"error": str(exc)}
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            stats = dict(torch.cuda.memory_stats())

            def pair(key: str) -> dict[str, int]:
                return {"current": stats.get(f"{key}.all.current", 0), "peak": stats.get(f"{key}.all.peak", 0)}

            cuda: dict[str, Any] = {
                "system": {"free": free, "used": total - free, "total": total},
                "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
                "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
            }
        else:
            cuda = {"error": "unavailable"}
    except Exception as exc:  # noqa: BLE001
        cuda = {"error": str(exc)}
    return {"ram": ram, "cuda": cuda}


def build_info_router(service: ServeService) -> APIRouter:
    """The listing, refresh and state routes; included by `api.build_router` under its /sdapi/v1 prefix."""
    router = APIRouter()

    @router.get("/cmd-flags")
    def get_cmd_flags() -> dict[str, Any]:
        """The server's configuration under A1111's flag names; credentials never shown."""
        return cmd_flags(service)

    @router.get("/schedulers", response_model=list[schemas.SchedulerItem])
    def schedulers():
        """A1111 1.10's "Schedule type" entries."""
        from animegen.generate.schedules import SCHEDULE_TYPES

        return [{"name": s.name, "label": s.label, "aliases": list(s.aliases) or None,
                 "default_rho": _default_rho(s.function), "need_inner_model": s.label in _NEED_INNER_MODEL}
                for s in SCHEDULE_TYPES.values()]

    @router.get("/upscalers", response_model=list[schemas.UpscalerItem])
    def upscalers():
        """A1111's shared.sd_upscalers: the built-ins (None, Lanczos, Nearest; scale 4 as A1111 lists them), then
        the model files by name (model_name ESRGAN or RealESRGAN, scale detected from the file's header)."""
        return [{"name": e.name, "model_name": e.model_name, "model_path": None if e.path is None else str(e.path),
                 "model_url": None, "scale": e.scale} for e in service.catalog.upscalers()]

    @router.get("/latent-upscale-modes", response_model=list[schemas.LatentUpscalerModeItem])
    def latent_upscale_modes():
        """The hires fix's latent upscalers."""
        from animegen.generate.hires import LATENT_UPSCALERS

        return [{"name": name} for name in LATENT_UPSCALERS]

    @router.get("/sd-vae", response_model=list[schemas.SdVaeItem])
    def sd_vae():
        """VAE files inside --model-dir (`*.vae.safetensors`, or under a top-level VAE/ folder)."""
        return [{"model_name": e.name, "filename": e.relative} for e in service.catalog.vaes()]

    @router.get("/prompt-styles", response_model=list[schemas.PromptStyleItem])
    def prompt_styles():
        """animegen's prompt presets as A1111 styles: `{prompt}` marks where the prompt goes."""
        from animegen.prompts.presets import build_prompt, list_presets

        return [{"name": p.name, "prompt": build_prompt(p, "{prompt}"), "negative_prompt": p.negative}
                for p in list_presets()]

    @router.get("/memory", response_model=schemas.MemoryResponse)
    def get_memory():
        return memory()

    for kind in ("hypernetworks", "realesrgan-models"):
        router.add_api_route(f"/{kind}", _nothing, methods=["GET"], response_model=list[schemas.NamedPathItem],
                             summary=f"{kind}: animegen has none")
    for kind in ("face-restorers", "script-info", "extensions"):
        router.add_api_route(f"/{kind}", _nothing, methods=["GET"], response_model=list[dict[str, Any]],
                             summary=f"{kind}: animegen has none")

    @router.get("/scripts", response_model=schemas.ScriptsList)
    def scripts():
        """A1111 scripts: animegen runs none."""
        return {"txt2img": [], "img2img": []}

    for kind in ("checkpoints", "vae", "loras", "embeddings"):
        router.add_api_route(f"/refresh-{kind}", _refresh, methods=["POST"],
                             summary=f"refresh {kind}: a no-op, listings read the folders on every call")
    return router


def _nothing() -> list:
    return []


def _refresh() -> None:
    return None


def _default_rho(function) -> float:
    """A1111's `default_rho`: the schedule function's `rho` default (Karras 7, Polyexponential 1), else -1."""
    import inspect

    rho = inspect.signature(function).parameters.get("rho") if function is not None else None
    return float(rho.default) if rho is not None else -1.0
