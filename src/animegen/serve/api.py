"""The `/sdapi/v1/*` routes, shaped like AUTOMATIC1111's API so its clients work unchanged.

Generation, options, progress and control live here; the listing/state routes in `api_info`, the Extras
(upscaling) routes in `api_extras`, both included under the same prefix by `build_router`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from animegen import __version__
from animegen.generate import SAMPLERS, parse_infotext
from animegen.generate.nan_check import NonFiniteOutputError
from animegen.serve import schemas
from animegen.serve.catalog import lora_metadata
from animegen.serve.codec import BadImageError, decode_image, encode_png, to_rgb
from animegen.serve.jobs import QueueFullError, ServerClosedError
from animegen.serve.service import GenerationResult, RequestError, ServeService


def error_response(exc: Exception) -> JSONResponse:
    """Map server-side refusals to HTTP: 422 field errors in FastAPI's shape, 429 full queue, 503 closed,
    500 with the message for NaN output (the model's fault, as A1111 answers its NansException)."""
    if isinstance(exc, RequestError):
        if exc.status == 422:
            detail: Any = [{"loc": ["body", exc.field], "msg": exc.message, "type": "value_error"}]
        else:
            detail = exc.message
        return JSONResponse({"detail": detail}, status_code=exc.status)
    if isinstance(exc, BadImageError):
        return JSONResponse({"detail": [{"loc": ["body", exc.field], "msg": exc.reason, "type": "value_error"}]},
                            status_code=422)
    if isinstance(exc, QueueFullError):
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "5"})
    if isinstance(exc, ServerClosedError):
        return JSONResponse({"detail": str(exc)}, status_code=503)
    if isinstance(exc, NonFiniteOutputError):
        return JSONResponse({"detail": str(exc)}, status_code=500)
    if isinstance(exc, ClientGoneError):  # nobody reads it; 499 as nginx logs it
        return JSONResponse({"detail": str(exc)}, status_code=499)
    raise exc


async def validation_error_response(_request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 for a body that does not validate, encodable whatever the body held: an input that JSON
    cannot carry (NaN, Infinity: FastAPI's parser accepts them) is sent as its repr, text ASCII-escaped (a lone
    surrogate cannot be UTF-8). FastAPI's own handler answered such bodies with a 500."""
    errors = jsonable_encoder(exc.errors())
    for error in errors:
        try:
            json.dumps(error.get("input"), allow_nan=False)
        except ValueError:
            error["input"] = repr(error["input"])
    body = json.dumps({"detail": errors}, ensure_ascii=True, allow_nan=False)
    return Response(body, status_code=422, media_type="application/json")


class ClientGoneError(RuntimeError):
    """The HTTP client disconnected before its job finished (nobody reads the answer)."""


async def _unless_client_leaves(future, http: Request, service: ServeService):
    """The job's result; if the client disconnects first, its job is dropped from the queue or interrupted."""
    job = asyncio.wrap_future(future)

    async def disconnected() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not job.done():
        service.queue.abandon(future)
        job.cancel()
        raise ClientGoneError("the client disconnected before its job finished")
    return job.result()


def _info_json(req: schemas.Txt2ImgRequest, result: GenerationResult, denoising: float | None,
               clip_skip: int) -> str:
    """A1111's `Processed.js()`: what clients read seeds, prompts and infotexts from."""
    images = result.images
    seeds = [im.seed for im in images]
    first = images[0].parameters if images else {}
    # what ran (the request's unset fields resolved by preset and model family), else what was asked
    width, height = (int(v) for v in first["Size"].split("x")) if "Size" in first else (req.width, req.height)
    info = {
        "prompt": req.prompt,
        "all_prompts": [req.prompt] * len(images),
        "negative_prompt": req.negative_prompt,
        "all_negative_prompts": [req.negative_prompt] * len(images),
        "seed": seeds[0] if seeds else req.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(images),
        "subseed_strength": 0,
        "width": width,
        "height": height,
        "sampler_name": first.get("Sampler", req.sampler_name or req.sampler_index),
        "cfg_scale": float(first["CFG scale"]) if "CFG scale" in first else req.cfg_scale,
        "steps": first.get("Steps", req.steps),
        "batch_size": req.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": denoising,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [im.infotext for im in images],
        "styles": req.styles or [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": clip_skip,
        "is_using_inpainting_conditioning": False,
        "interrupted": result.interrupted,
        "interrupted_reason": result.interrupted_reason,  # animegen's: why, when the server cut the job off
        "version": f"animegen {__version__}",
    }
    return json.dumps(info)


def inpainting_fields(req: schemas.Img2ImgRequest, mask) -> dict[str, Any]:
    """A1111's img2img mask fields as `GenerationRequest`'s (its `inpainting_fill` number as the mode's name);
    empty without a mask, as A1111 ignores them then."""
    from animegen.generate.inpaint import inpainting_fill_name

    if mask is None:
        return {}
    return {"mask": mask, "mask_blur": req.mask_blur, "inpainting_fill": inpainting_fill_name(req.inpainting_fill),
            "inpaint_full_res": req.inpaint_full_res, "inpaint_full_res_padding": req.inpaint_full_res_padding,
            "inpainting_mask_invert": bool(req.inpainting_mask_invert)}


def build_router(service: ServeService) -> APIRouter:
    """All A1111-compatible routes bound to one `ServeService`."""
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])

    async def run_generation(req: schemas.Txt2ImgRequest, http: Request, *, init_image=None, inpainting=None,
                             label: str):
        override = req.override_settings or {}
        model = None
        if override.get("sd_model_checkpoint"):
            model = service.find_checkpoint(override["sd_model_checkpoint"], "override_settings")
        clip_skip = override.get("CLIP_stop_at_last_layers")
        is_img2img = init_image is not None
        hires = req.enable_hr and not is_img2img
        request = await asyncio.to_thread(  # parsing and checking prompts is CPU work: off the event loop
            service.build_request,
            prompt=req.prompt, negative_prompt=req.negative_prompt, preset=req.preset, styles=req.styles,
            sampler=req.sampler_name or req.sampler_index, schedule_type=req.scheduler, steps=req.steps,
            cfg_scale=req.cfg_scale, seed=req.seed, width=req.width, height=req.height, clip_skip=clip_skip,
            n_iter=req.n_iter, batch_size=req.batch_size, init_image=init_image,
            strength=req.denoising_strength if is_img2img else 0.75,
            hires=hires, hires_scale=req.hr_scale if hires else 1.0,
            hires_steps=req.hr_second_pass_steps if hires else 0,
            hires_denoise=(req.denoising_strength or 0.7) if hires else 0.5, hires_upscaler=req.hr_upscaler,
            hires_resize_x=req.hr_resize_x if hires else 0, hires_resize_y=req.hr_resize_y if hires else 0,
            hires_sampler=req.hr_sampler_name, hires_schedule_type=req.hr_scheduler, hires_prompt=req.hr_prompt,
            hires_negative_prompt=req.hr_negative_prompt, hires_cfg_scale=req.hr_cfg,
            rng=req.rng if req.rng is not None else override.get("randn_source"),
            eta_noise_seed_delta=req.eta_noise_seed_delta if req.eta_noise_seed_delta is not None
            else override.get("eta_noise_seed_delta"),
            subseed=req.subseed, subseed_strength=req.subseed_strength, guidance_rescale=req.guidance_rescale,
            emphasis=req.emphasis if req.emphasis is not None else override.get("emphasis"), inpainting=inpainting,
            detailers=service.detailer_units(req.alwayson_scripts),
            controlnet_units=service.controlnet_units(req.alwayson_scripts, init_image),
        )
        future = service.submit(request, model=model, keep_model=not req.override_settings_restore_afterwards,
                                label=label)
        result: GenerationResult = await _unless_client_leaves(future, http, service)
        images = [encode_png(im.image, im.infotext) for im in result.images] if req.send_images else []
        denoising = req.denoising_strength if (is_img2img or hires) else None
        info = _info_json(req, result, denoising, request.clip_skip)
        return images, info

    @router.post("/txt2img", response_model=schemas.GenerationResponse)
    async def txt2img(req: schemas.Txt2ImgRequest, http: Request):
        """Text to image. Blocks until the job has run; 429 when the queue is full."""
        try:
            images, info = await run_generation(req, http, label="txt2img")
        except Exception as exc:  # noqa: BLE001 - known refusals become HTTP errors, others re-raise
            return error_response(exc)
        return {"images": images, "parameters": req.model_dump(), "info": info}

    def _inpainting(req: schemas.Img2ImgRequest) -> dict[str, Any]:
        """The request's mask (decoded as `init_images` are, within the same pixel limit) and its settings."""
        mask = None if not req.mask else decode_image(req.mask, field="mask",
                                                       max_pixels=service.limits.max_input_pixels)
        return inpainting_fields(req, mask)

    @router.post("/img2img", response_model=schemas.GenerationResponse)
    async def img2img(req: schemas.Img2ImgRequest, http: Request):
        """Image to image from `init_images[0]` (resized to width x height, as A1111's resize mode 0)."""
        try:
            image = decode_image(req.init_images[0], field="init_images",
                                 max_pixels=service.limits.max_input_pixels)
            image = to_rgb(image)  # the engine resizes it to the resolved width x height (Lanczos, as A1111)
            images, info = await run_generation(req, http, init_image=image, inpainting=_inpainting(req),
                                                label="img2img")
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        parameters = req.model_dump()
        if not req.include_init_images:
            parameters["init_images"] = None
        return {"images": images, "parameters": parameters, "info": info}

    @router.get("/sd-models", response_model=list[schemas.SdModelItem])
    def sd_models():
        """Checkpoints the server may switch to (inside --model-dir, plus the start model)."""
        return [{"title": e.title, "model_name": e.model_name, "hash": e.hash, "sha256": None,
                 "filename": e.name, "config": None} for e in service.catalog.checkpoints()]

    @router.get("/samplers", response_model=list[schemas.SamplerItem])
    def samplers():
        return [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)}
                for s in SAMPLERS.values()]

    @router.get("/loras", response_model=list[schemas.LoraItem])
    def loras():
        """LoRAs usable as `<lora:name:weight>` (inside --lora-dir); paths relative to it; `metadata` is the file's
        safetensors `__metadata__` (header only). `alias` is the name, the only one `<lora:...>` resolves."""
        root = service.catalog.lora_dir
        items = []
        for entry in service.catalog.loras():
            rel = entry.path.relative_to(root.resolve()).as_posix() if root else entry.path.name
            items.append({"name": entry.name, "alias": entry.name, "path": rel, "metadata": lora_metadata(entry.path)})
        return items

    @router.get("/embeddings")
    def embeddings() -> dict[str, Any]:
        """Textual-inversion embeddings in --embeddings-dir: "loaded" fit the model, "skipped" do not (A1111's shape)."""
        return service.embeddings()

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return service.options()

    @router.post("/options")
    async def set_options(values: dict[str, Any] = Body(...)):
        """Set options; `sd_model_checkpoint` switches the model after the jobs already queued."""
        try:
            future = service.set_options(values)
            if future is not None:
                await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        return None

    @router.get("/progress", response_model=schemas.ProgressResponse)
    def progress(skip_current_image: bool = False):
        snap = service.queue.snapshot()
        state = schemas.ProgressState(
            interrupted=snap.interrupted, skipped=bool(snap.job) and service.skipping, job=snap.job,
            job_count=snap.job_count, job_timestamp=snap.job_timestamp, job_no=snap.job_no, sampling_step=snap.sampling_step,
            sampling_steps=snap.sampling_steps, queued=snap.queued,
        )
        return {"progress": snap.progress, "eta_relative": snap.eta_relative, "state": state,
                "current_image": None, "textinfo": None}

    @router.post("/interrupt")
    def interrupt():
        """Stop the running job at its next step; it returns the images finished so far."""
        service.queue.interrupt()
        return {}

    @router.post("/skip")
    def skip():
        """Skip the current image(s) of the running job: its batch stops sampling, is decoded as it is, and the
        job goes on with its next batch (A1111's `state.skip()`)."""
        service.skip()

    @router.post("/png-info", response_model=schemas.PngInfoResponse)
    def png_info(req: schemas.PngInfoRequest):
        """Read the generation parameters stored in a PNG (A1111's or animegen's)."""
        try:
            image = decode_image(req.image, field="image", max_pixels=service.limits.max_input_pixels)
        except BadImageError as exc:
            return error_response(exc)
        items = {k: v for k, v in image.info.items() if isinstance(v, (str, int, float))}
        geninfo = items.pop("parameters", None)
        if not isinstance(geninfo, str):
            return {"info": "", "items": items, "parameters": {}}
        return {"info": geninfo, "items": items, "parameters": parse_infotext(geninfo)}

    from animegen.serve.api_extras import build_extras_router
    from animegen.serve.api_info import build_info_router

    router.include_router(build_info_router(service))
    router.include_router(build_extras_router(service))
    return router

