"""A1111's Extras routes, `POST /sdapi/v1/extra-single-image` and `/extra-batch-images`.

The upscaling is `animegen.generate.upscale` (A1111's postprocessing Upscale step) with the built-in upscalers
and the model upscalers `/sdapi/v1/upscalers` lists (`catalog.upscalers()`: `.safetensors` files by name, never
a path); this module only decodes, checks and encodes. Inputs obey the same size limit as the other image routes (`limits.max_input_pixels`) and
the result must fit `limits.max_pixels`, checked before any pixel is resized. Unknown upscalers, and face
restoration asked for (gfpgan/codeformer visibility > 0; animegen ships no face restorer), are 422 errors naming
the field. The returned PNG keeps the input's text chunks and adds A1111's `postprocessing` text; `html_info` is
that text as A1111's `plaintext_to_html` writes it.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from fastapi import APIRouter
from PIL import Image, PngImagePlugin

from animegen.generate.upscale import (
    UpscaleError,
    UpscaleSettings,
    output_size,
    postprocess_infotext,
    postprocess_upscale,
)
from animegen.serve import schemas
from animegen.serve.codec import BadImageError, decode_image
from animegen.serve.service import RequestError, ServeService


def _models(service: ServeService) -> dict[str, Path]:
    """{name: file} of the server's upscaler models."""
    return {e.name: e.path for e in service.catalog.upscalers() if e.path is not None}


def _settings(req: schemas.ExtrasBaseRequest, models: dict[str, Path]) -> UpscaleSettings:
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(req, field) > 0:
            raise RequestError(field, f"{field} {getattr(req, field)}: animegen ships no face restorer (GFPGAN, "
                                      "CodeFormer); send 0")
    settings = UpscaleSettings(upscaler_1=req.upscaler_1, upscaler_2=req.upscaler_2,
                               upscaler_2_visibility=req.extras_upscaler_2_visibility, resize_mode=req.resize_mode,
                               scale=req.upscaling_resize, width=req.upscaling_resize_w, height=req.upscaling_resize_h,
                               crop=req.upscaling_crop)
    try:
        return settings.checked(models)
    except UpscaleError as exc:
        raise RequestError(exc.field, exc.message) from None


def _upscale_one(service: ServeService, data: str, field: str, settings: UpscaleSettings,
                 models: dict[str, Path]) -> tuple[str, str]:
    """(base64 PNG, postprocessing text) of one uploaded image."""
    image = decode_image(data, field=field, max_pixels=service.limits.max_input_pixels)
    width, height = output_size(image.width, image.height, settings, models)
    if width * height > service.limits.max_pixels:
        size_field = "upscaling_resize" if settings.resize_mode == 0 else "upscaling_resize_w"
        raise RequestError(size_field, f"the result would be {width}x{height} pixels, more than the server limit of "
                                       f"{service.limits.max_pixels} pixels")
    result, info = postprocess_upscale(image, settings, models)
    text = postprocess_infotext(info)
    return _encode(result, image, text), text


def _encode(result: Image.Image, source: Image.Image, text: str) -> str:
    """Base64 PNG of `result` with the input's PNG text chunks plus A1111's `postprocessing` one."""
    chunks = {k: v for k, v in source.info.items() if isinstance(k, str) and isinstance(v, str)}
    chunks["postprocessing"] = text
    pnginfo = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        if value.isascii():
            pnginfo.add_text(key, value)
        else:
            pnginfo.add_itxt(key, value)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plaintext_to_html(text: str) -> str:
    """A1111's `ui_common.plaintext_to_html`."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def build_extras_router(service: ServeService) -> APIRouter:
    """The Extras routes; included by `api.build_router` under its /sdapi/v1 prefix."""
    from animegen.serve.api import error_response

    router = APIRouter()

    @router.post("/extra-single-image", response_model=schemas.ExtrasSingleImageResponse)
    def extra_single_image(req: schemas.ExtrasSingleImageRequest):
        """Upscale one image with a built-in (None, Lanczos, Nearest) or a listed model upscaler, as A1111's Extras."""
        try:
            models = _models(service)
            settings = _settings(req, models)
            if not req.image:
                raise BadImageError("image", "is empty")
            image, text = _upscale_one(service, req.image, "image", settings, models)
        except (RequestError, BadImageError) as exc:
            return error_response(exc)
        return {"image": image, "html_info": plaintext_to_html(text)}

    @router.post("/extra-batch-images", response_model=schemas.ExtrasBatchImagesResponse)
    def extra_batch_images(req: schemas.ExtrasBatchImagesRequest):
        """Upscale every image of `imageList`; `html_info` describes the last one, as A1111's."""
        try:
            models = _models(service)
            settings = _settings(req, models)
            if len(req.imageList) > service.limits.max_images:
                raise RequestError("imageList", f"{len(req.imageList)} images exceed the server limit "
                                                f"{service.limits.max_images}")
            results = [_upscale_one(service, item.data, "imageList", settings, models) for item in req.imageList]
        except (RequestError, BadImageError) as exc:
            return error_response(exc)
        text = results[-1][1] if results else ""
        return {"images": [image for image, _ in results], "html_info": plaintext_to_html(text)}

    return router
