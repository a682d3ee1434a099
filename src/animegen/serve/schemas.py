"""Request and response bodies with AUTOMATIC1111's field names, so existing API clients work unchanged.

Fields A1111 accepts but animegen does not implement (restore_faces, tiling, scripts, ...) are
accepted and ignored, as are unknown fields (`extra="ignore"`); wrong types are rejected with 422.

Deliberately unlike A1111, the generation settings (sampler, steps, CFG, size) have no default here:
a field the client leaves out stays None, and `animegen.generate.request.resolve` fills it from the
preset, then from the model family, exactly as for the CLI. A second copy of the defaults here is what
made a preset's size and steps never apply through the API.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from animegen.generate.request import GenerationRequest

_UNSET = "unset: the preset's value, else animegen's default (size: the model family's)"


class _A1111Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # JSON's NaN/Infinity: 422, not a 500 later


class Txt2ImgRequest(_A1111Body):
    """`POST /sdapi/v1/txt2img` (A1111's StableDiffusionTxt2ImgProcessingAPI, the fields that matter)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = Field(None, description="A1111 prompt styles: at most one, the name of an animegen "
                                     "prompt preset (GET /sdapi/v1/prompt-styles), applied as `preset`")
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    sampler_name: str | None = Field(None, description=_UNSET)
    sampler_index: str | None = Field(None, description="deprecated alias of sampler_name")
    scheduler: str | None = Field(None, description="A1111 1.9+ 'Schedule type' (Automatic, Karras)")
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1, description=_UNSET)
    cfg_scale: float | None = Field(None, ge=0.0, le=100.0, description=_UNSET)
    width: int | None = Field(None, ge=64, description=_UNSET)
    height: int | None = Field(None, ge=64, description=_UNSET)
    restore_faces: bool | None = None
    tiling: bool | None = None
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0)
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1.0, le=4.0)
    hr_second_pass_steps: int = Field(0, ge=0)
    hr_upscaler: str | None = Field(None, description="Latent (default), Latent (antialiased), Latent (bicubic), "
                                    "Latent (bicubic antialiased), Latent (nearest), Latent (nearest-exact), "
                                    "Lanczos, Nearest, None, or a model upscaler /sdapi/v1/upscalers lists")
    hr_resize_x: int = Field(0, ge=0, description="hires fix: resize to this width instead of hr_scale")
    hr_resize_y: int = Field(0, ge=0, description="hires fix: resize to this height instead of hr_scale")
    hr_sampler_name: str | None = Field(None, description="hires pass sampler; unset: sampler_name")
    hr_scheduler: str | None = Field(None, description="hires pass schedule type; unset: scheduler")
    hr_prompt: str = Field("", description="hires pass prompt; empty: prompt")
    hr_negative_prompt: str = Field("", description="hires pass negative prompt; empty: negative_prompt")
    hr_cfg: float | None = Field(None, ge=0.0, description="Forge's hires CFG scale; unset: cfg_scale")
    override_settings: dict[str, Any] = Field(default_factory=dict)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict, description="A1111 extension arguments; "
                                             "animegen reads ADetailer's ({'ADetailer': {'args': [true, false, "
                                             "{'ad_model': 'face_yolov8n.pt', ...}]}}) and ignores the others")
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False
    preset: str = Field(GenerationRequest.preset,
                        description="animegen prompt preset (animagine, dashanime, danbooru, none)")
    rng: str | None = Field(None, description="noise source GPU, CPU or NV (A1111's 'RNG'); unset: "
                            "override_settings.randn_source, else the server's randn_source option (GPU)")
    eta_noise_seed_delta: int | None = Field(None, description="A1111's ENSD; unset: override_settings."
                                             "eta_noise_seed_delta, else the server's option (0)")
    guidance_rescale: float = Field(0.0, ge=0.0, le=1.0, description="CFG rescale phi (infotext 'Rescale CFG', as "
                                    "Forge); 0 = off")
    emphasis: str | None = Field(None, description="A1111 emphasis mode (Original, No norm, Ignore, None); unset: "
                                 "override_settings.emphasis, else Original")


class Img2ImgRequest(Txt2ImgRequest):
    """`POST /sdapi/v1/img2img`: txt2img fields plus base64 `init_images` and `denoising_strength`."""

    init_images: list[str] = Field(..., min_length=1, description="base64 images (data: URLs accepted)")
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    resize_mode: int = 0
    include_init_images: bool = False
    # inpainting, with A1111's API defaults (its UI's differ: original, whole picture, padding 32)
    mask: str | None = Field(None, description="base64 inpainting mask: white = regenerate, black = keep (an RGBA "
                             "mask's alpha where it is transparent); resized to the init image's size")
    mask_blur: int = Field(4, ge=0, description="Gaussian blur sigma of the mask's edges, in pixels")
    inpainting_fill: int = Field(0, ge=0, le=3, description="masked content: 0 fill, 1 original, 2 latent noise, "
                                 "3 latent nothing")
    inpaint_full_res: bool = Field(True, description="inpaint area: true = only masked (the mask's box, enlarged "
                                   "to width x height, pasted back), false = whole picture")
    inpaint_full_res_padding: int = Field(0, ge=0, description="only masked: pixels added around the mask's box")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: inpaint the black (not masked) part")


class GenerationResponse(BaseModel):
    """A1111's TextToImageResponse / ImageToImageResponse."""

    images: list[str] = Field(description="base64 PNGs, each with its infotext in the `parameters` chunk")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seeds, prompts, model, and `infotexts` (one per image)")


class PngInfoRequest(_A1111Body):
    image: str = Field(..., description="base64 PNG (data: URL accepted)")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    queued: int = Field(0, description="animegen: jobs waiting behind the running one")


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class SdModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SchedulerItem(BaseModel):
    """`GET /sdapi/v1/schedulers` (A1111 1.10's sd_schedulers entries)."""

    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class UpscalerItem(BaseModel):
    """`GET /sdapi/v1/upscalers`: A1111's shared.sd_upscalers (the built-ins, then the model upscalers)."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class SdVaeItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str = Field(description="the file name, what A1111's sd_vae option takes")
    filename: str = Field(description="path relative to --model-dir")


class NamedPathItem(BaseModel):
    """`GET /sdapi/v1/hypernetworks` and `/realesrgan-models` items (animegen has none)."""

    name: str
    path: str | None = None


class PromptStyleItem(BaseModel):
    """`GET /sdapi/v1/prompt-styles`: animegen's prompt presets are its styles."""

    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="free/used/total bytes of system memory (or error)")
    cuda: dict[str, Any] = Field(description="CUDA system/active/allocated/reserved/inactive/events (or error)")


class ScriptsList(BaseModel):
    txt2img: list[str] | None = None
    img2img: list[str] | None = None


class ExtrasBaseRequest(_A1111Body):
    """A1111's ExtrasBaseRequest: built-in and listed model upscalers (see `animegen.generate.upscale`)."""

    resize_mode: int = Field(0, ge=0, le=1, description="0: scale by upscaling_resize; 1: to upscaling_resize_w x h")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0, description="face restoration: animegen has none, must be 0")
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0, description="face restoration: animegen has none, "
                                         "must be 0")
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0)
    upscaling_resize: float = Field(2.0, gt=0.0, description="scale factor (resize_mode 0)")
    upscaling_resize_w: int = Field(512, ge=1, description="target width (resize_mode 1)")
    upscaling_resize_h: int = Field(512, ge=1, description="target height (resize_mode 1)")
    upscaling_crop: bool = Field(True, description="resize_mode 1: crop the result to exactly w x h")
    upscaler_1: str = Field("None", description="None, Lanczos, Nearest or a model /sdapi/v1/upscalers lists")
    upscaler_2: str = Field("None", description="None, Lanczos, Nearest or a model /sdapi/v1/upscalers lists")
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field("", description="base64 image (data: URL accepted)")


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str | None = None


class FileData(BaseModel):
    data: str = Field(description="base64 image")
    name: str


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData]  # A1111's field name


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]
