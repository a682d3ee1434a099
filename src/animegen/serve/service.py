"""The server's core, shared by the REST API and the web UI: limits, name resolution and the job queue.

Both front ends turn user input into a `GenerationRequest` here, so a limit or a path check
cannot be skipped by using the other front end. Settings the client did not send stay None, so
`animegen.generate.request.resolve` applies the preset and the model family's defaults exactly as for
the CLI; the limits are checked on those resolved values (with the size default of the model now
selected: a per-request model override of another family is checked against the selected one's).
"""

from __future__ import annotations

import gc
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from animegen.core.errors import AnimegenError
from animegen.generate.hires import hires_target
from animegen.generate.request import GenerationRequest, resolve
from animegen.generate.samplers import resolve_sampler
from animegen.serve.catalog import Catalog, CheckpointEntry, NotFoundError, UnsafeNameError
from animegen.serve.config import ServeConfig
from animegen.serve.jobs import JobQueue, ModelBackend

log = logging.getLogger(__name__)

OPTION_DEFAULTS: dict[str, Any] = {
    "CLIP_stop_at_last_layers": 1,
    "randn_source": GenerationRequest.rng,  # A1111's names of the request's rng / eta_noise_seed_delta
    "eta_noise_seed_delta": GenerationRequest.eta_noise_seed_delta,
    "samples_format": "png",
    "enable_pnginfo": True,
}


class RequestError(AnimegenError):
    """A request asks for something the server refuses; `field` is the offending request field."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


@dataclass
class GenerationResult:
    """What a finished generation job hands back: the images and the model that made them."""

    images: list  # list[animegen.generate.GeneratedImage]
    model_name: str
    model_hash: str | None
    interrupted: bool = False
    interrupted_reason: str | None = None  # set by the job queue when it cut the job off (max_job_seconds)


class GeneratorBackend:
    """The real model worker state: one `animegen.generate.Generator`, replaced on model switch."""

    def __init__(self, config: ServeConfig, catalog: Catalog):
        self.config = config
        self.catalog = catalog
        self.generator = None
        self.loaded: CheckpointEntry | None = None
        self.skip_event = threading.Event()  # A1111's /skip; the engine clears it as each batch starts

    def load(self, entry: CheckpointEntry) -> None:
        """Free the current model, then load `entry` (never allowing pickle)."""
        from animegen.generate import Generator

        previous = self.loaded
        self.generator, self.loaded = None, None
        gc.collect()
        _empty_device_cache()
        try:
            self.generator = Generator(
                str(entry.path), vae=self.config.vae, device=self.config.device, dtype=self.config.dtype,
                allow_pickle=False, lora_dir=None, nan_check=self.config.nan_check,
                upscaler_dir=self.catalog.upscaler_folders(),
            )
        except Exception:
            if previous is not None and previous.path != entry.path:
                log.warning("loading %s failed; reloading %s", entry.name, previous.name)
                self.load(previous)
            raise
        self.loaded = entry
        self.catalog.remember_hash(entry.path, self.generator.model_hash)
        from animegen.prompts.embeddings import EmbeddingLibrary  # inside the folder only, never pickles

        self.generator.embeddings = EmbeddingLibrary(self.config.embeddings_dir, inside_only=True)

    def embeddings(self) -> dict:
        """A1111's `/sdapi/v1/embeddings` for the loaded model (empty while a model is being switched)."""
        generator = self.generator
        return generator.embeddings.listing(generator.pipe) if generator else {"loaded": {}, "skipped": {}}

    @property
    def default_size(self) -> int:
        """The loaded model family's image size when neither the request nor its preset sets one."""
        return self.generator.default_size

    def generate(self, request, progress, interrupt) -> GenerationResult:
        from animegen.generate import GenerationInterrupted

        generator = self.generator
        try:
            images = generator(request, progress=progress, interrupt=interrupt, skip=self.skip_event)
        except GenerationInterrupted:
            return GenerationResult([], generator.model_name, generator.model_hash, interrupted=True)
        return GenerationResult(images, generator.model_name, generator.model_hash, interrupt.is_set())


def _empty_device_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001 - freeing memory is best effort
        log.debug("could not empty the device cache: %s", exc)


class ServeService:
    """Owns the catalog, the options and the single-worker job queue."""

    def __init__(self, config: ServeConfig, backend: ModelBackend | None = None):
        self.config = config
        self.limits = config.limits
        self.catalog = Catalog(config.model, config.model_dir, config.lora_dir, config.upscaler_dir)
        self.backend = backend if backend is not None else GeneratorBackend(config, self.catalog)
        start = self.catalog.start_entry
        self.backend.load(start)  # at start-up, so a bad --model fails before serving
        self.queue = JobQueue(self.backend, start, config.max_queue, config.limits.max_job_seconds)
        self._options_lock = threading.Lock()
        self._options = dict(OPTION_DEFAULTS)

    # -- options ----------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """A1111's `/sdapi/v1/options`: the selected checkpoint plus the options animegen honours."""
        selected = self._current_entry(self.queue.selected)
        with self._options_lock:
            options = dict(self._options)
        options["sd_model_checkpoint"] = selected.title
        options["sd_checkpoint_hash"] = selected.hash
        return options

    def _current_entry(self, entry: CheckpointEntry) -> CheckpointEntry:
        for listed in self.catalog.checkpoints():
            if listed.path == entry.path:
                return listed
        return entry

    def set_options(self, values: dict[str, Any]) -> Future | None:
        """Store known options; a new `sd_model_checkpoint` queues a switch (returned future)."""
        clip_skip = values.get("CLIP_stop_at_last_layers")
        if clip_skip is not None:
            self._check_clip_skip(clip_skip, "CLIP_stop_at_last_layers")
        self._check_noise(values)
        future = None
        if values.get("sd_model_checkpoint") is not None:
            entry = self.find_checkpoint(values["sd_model_checkpoint"], "sd_model_checkpoint")
            future = self.queue.switch_model(entry)
        with self._options_lock:
            for key in OPTION_DEFAULTS:
                if key in values:
                    self._options[key] = values[key]
        return future

    def embeddings(self) -> dict:
        """A1111's `GET /sdapi/v1/embeddings`: --embeddings-dir files that fit the loaded model ("loaded") or not."""
        listing = getattr(self.backend, "embeddings", None)  # stand-in backends have none
        return listing() if listing is not None else {"loaded": {}, "skipped": {}}

    def skip(self) -> None:
        """A1111's `POST /sdapi/v1/skip`: the running job's current batch stops sampling and is decoded as it is,
        the job's next batch runs. A skip with no batch sampling is forgotten when the next batch starts."""
        event = getattr(self.backend, "skip_event", None)  # stand-in backends have none
        if event is not None:
            event.set()

    @property
    def skipping(self) -> bool:
        """A skip was asked and the current batch has not ended yet (A1111's `state.skipped`)."""
        event = getattr(self.backend, "skip_event", None)
        return bool(event is not None and event.is_set())

    def find_checkpoint(self, name: Any, field: str) -> CheckpointEntry:
        if not isinstance(name, str):
            raise RequestError(field, f"{field} must be a string model title")
        try:
            return self.catalog.find_checkpoint(name)
        except UnsafeNameError as exc:
            raise RequestError(field, str(exc), status=400) from None
        except NotFoundError as exc:
            raise RequestError(field, str(exc), status=404) from None

    @staticmethod
    def _check_clip_skip(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
            raise RequestError(field, f"{field} must be an integer from 1 to 12, got {value!r}")
        return value

    # -- requests ---------------------------------------------------------------------------------
    def check_size(self, *, width: int, height: int, steps: int, images: int, hires_scale: float = 1.0,
                   hires_steps: int = 0) -> None:
        """Enforce the configured limits; the error names the field and the allowed maximum."""
        lim = self.limits
        final_w, final_h = int(width * hires_scale), int(height * hires_scale)
        checks = [
            ("width", width <= lim.max_width, f"width {width} exceeds the server limit {lim.max_width}"),
            ("height", height <= lim.max_height, f"height {height} exceeds the server limit {lim.max_height}"),
            ("width", width % 8 == 0, f"width {width} must be a multiple of 8"),
            ("height", height % 8 == 0, f"height {height} must be a multiple of 8"),
            ("width", final_w * final_h <= lim.max_pixels,
             f"{final_w}x{final_h} pixels exceed the server limit of {lim.max_pixels} pixels"),
            ("steps", steps <= lim.max_steps, f"steps {steps} exceeds the server limit {lim.max_steps}"),
            ("hr_second_pass_steps", hires_steps <= lim.max_steps,
             f"hires steps {hires_steps} exceed the server limit {lim.max_steps}"),
            ("n_iter", images <= lim.max_images,
             f"{images} images (n_iter x batch_size) exceed the server limit {lim.max_images}"),
        ]
        for field, ok, message in checks:
            if not ok:
                raise RequestError(field, message)

    def check_prompts(self, **fields: str) -> None:
        """Each prompt field (by its A1111 name) within `max_prompt_chars` and valid Unicode (no lone surrogate,
        which JSON's `\\ud800` escapes can carry and nothing after this could encode)."""
        limit = self.limits.max_prompt_chars
        for field, text in fields.items():
            if len(text) > limit:
                raise RequestError(field, f"{field} has {len(text)} characters; the server limit is {limit} "
                                   "(ServeLimits.max_prompt_chars)")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RequestError(field, f"{field} has a lone surrogate {text[exc.start]!r} at character "
                                   f"{exc.start}: not valid Unicode text") from None

    def split_loras(self, prompt: str) -> tuple[str, list[tuple[str, float | dict[str, float]]]]:
        """Take every `<name:...>` tag out of `prompt` (as A1111), resolving LoRA names inside --lora-dir only.

        The generator gets the resolved file paths, so nothing in a prompt is ever used as a path; a LoRA's
        te/unet multipliers travel as the engine's per-component multiplier.
        """
        from animegen.prompts.parser import parse_extra_networks

        try:
            networks = parse_extra_networks(prompt)
        except AnimegenError as exc:  # an unreadable <lora:...> tag: the CLI's message, naming the tag
            raise RequestError("prompt", str(exc)) from None
        tags, limit = len(networks.loras) + len(networks.unsupported), self.limits.max_extra_networks
        if tags > limit:
            raise RequestError("prompt", f"prompt has {tags} extra-network tags (<lora:...> and the like); the "
                               f"server limit is {limit}")
        networks.warn_ignored()
        loras = []
        for tag in networks.loras:
            try:
                entry = self.catalog.find_lora(tag.name)
            except UnsafeNameError as exc:
                raise RequestError("prompt", f"LoRA {exc}", status=400) from None
            except NotFoundError as exc:
                raise RequestError("prompt", str(exc), status=404) from None
            loras.append((str(entry.path), tag.multiplier))
        return (networks.text if networks.loras or networks.unsupported else prompt), loras

    def build_request(self, *, prompt: str, negative_prompt: str = "", preset: str | None = None,
                      sampler: str | None = None, schedule_type: str | None = None, steps: int | None = None,
                      cfg_scale: float | None = None, seed: int = -1, width: int | None = None,
                      height: int | None = None, clip_skip: int | None = None, n_iter: int = 1,
                      batch_size: int = 1, init_image=None, strength: float = 0.75, hires_scale: float = 1.0,
                      hires_steps: int = 0, hires_denoise: float = 0.5, rng: str | None = None,
                      eta_noise_seed_delta: int | None = None, hires: bool = False, hires_upscaler: str | None = None,
                      hires_resize_x: int = 0, hires_resize_y: int = 0, hires_sampler: str | None = None,
                      hires_schedule_type: str | None = None, hires_prompt: str = "",
                      hires_negative_prompt: str = "", hires_cfg_scale: float | None = None, subseed: int = -1,
                      subseed_strength: float = 0.0, guidance_rescale: float = 0.0,
                      emphasis: str | None = None, inpainting: dict[str, Any] | None = None,
                      detailers: tuple = (), controlnet_units: tuple = (),
                      styles: list[str] | None = None) -> GenerationRequest:
        """Validate everything and build the generator's request (LoRAs resolved to safe paths).

        None (sampler, steps, cfg_scale, width, height, preset) means "not sent": resolved later by the
        preset and the model family, the same way as for `animegen generate`. `inpainting` holds the request's
        mask fields (`mask`, `mask_blur`, `inpainting_fill`, ...: `GenerationRequest`'s names and values);
        `detailers` its ADetailer units (`detailer_units`), `controlnet_units` its ControlNet units
        (`controlnet_units`).
        """
        if sampler:
            try:
                sampler = resolve_sampler(sampler, schedule_type).name
                schedule_type = None
            except ValueError as exc:
                raise RequestError("sampler_name", str(exc)) from None
        if hires_sampler or hires_schedule_type:
            try:
                resolve_sampler(hires_sampler or sampler or "Euler a", hires_schedule_type)
            except ValueError as exc:
                raise RequestError("hr_sampler_name" if hires_sampler else "hr_scheduler", str(exc)) from None
        with self._options_lock:
            clip_skip = self._options["CLIP_stop_at_last_layers"] if clip_skip is None else clip_skip
            rng = self._options["randn_source"] if rng is None else rng
            ensd = self._options["eta_noise_seed_delta"] if eta_noise_seed_delta is None else eta_noise_seed_delta
        self._check_clip_skip(clip_skip, "CLIP_stop_at_last_layers")
        self.check_prompts(prompt=prompt, negative_prompt=negative_prompt, hr_prompt=hires_prompt,
                           hr_negative_prompt=hires_negative_prompt)
        preset = self.style_preset(styles, preset) or GenerationRequest.preset
        self._check_preset(preset)
        hires_upscaler = self._check_hires_upscaler(hires_upscaler or GenerationRequest.hires_upscaler)
        clean_prompt, loras = self.split_loras(prompt)
        request = GenerationRequest(
            prompt=clean_prompt, negative_prompt=negative_prompt, preset=preset, sampler=sampler or None,
            schedule_type=schedule_type, steps=steps, cfg_scale=cfg_scale, seed=seed, width=width,
            height=height, clip_skip=clip_skip, loras=loras, n=n_iter * batch_size, batch_size=batch_size,
            init_image=init_image, strength=strength, hires_scale=hires_scale, hires_steps=hires_steps,
            hires_denoise=hires_denoise, rng=rng, eta_noise_seed_delta=ensd, hires=hires,
            hires_upscaler=hires_upscaler, hires_resize_x=hires_resize_x,
            hires_resize_y=hires_resize_y, hires_sampler=hires_sampler, hires_schedule_type=hires_schedule_type,
            hires_prompt=hires_prompt, hires_negative_prompt=hires_negative_prompt, hires_cfg_scale=hires_cfg_scale,
            subseed=subseed, subseed_strength=subseed_strength, guidance_rescale=guidance_rescale,
            emphasis=emphasis or GenerationRequest.emphasis, detailers=tuple(detailers),
            controlnet_units=tuple(controlnet_units), **(inpainting or {}),
        )
        try:
            model = getattr(getattr(self.backend, "generator", None), "model", None)  # what `--preset auto` reads
            settings = resolve(request, self.backend.default_size, model=model)
        except ValueError as exc:
            raise RequestError(_field_of(str(exc)), str(exc)) from None
        target = hires_target(settings.width, settings.height, hires_scale, hires_resize_x, hires_resize_y)
        final = max(target.width / settings.width, target.height / settings.height) if settings.hires else 1.0
        self.check_size(width=settings.width, height=settings.height, steps=settings.steps,
                        images=n_iter * batch_size, hires_scale=final, hires_steps=hires_steps)
        self.check_schedules(settings)
        return request

    def check_schedules(self, settings) -> None:
        """Each pass's prompt schedule (a `ResolvedRequest`'s, planned as the engine plans it) within
        `max_schedule_chars`: the characters of its distinct texts, positive and negative, which is what the text
        encoder gets. A pass cannot exceed (scheduled steps + 1) x its prompts' length, so ordinary prompts are
        never expanded here."""
        from animegen.generate.conditioning import schedule_steps
        from animegen.prompts.schedule import pass_schedules

        limit = self.limits.max_schedule_chars
        first = resolve_sampler(settings.sampler, settings.schedule_type)
        steps = schedule_steps(first, settings.steps)
        passes = [("prompt", settings.prompt, settings.negative_prompt, {})]
        if settings.hires:
            hires = resolve_sampler(settings.hires_sampler or first.sampler.name,
                                    settings.hires_schedule_type or first.schedule.label)
            hires_steps = schedule_steps(hires, settings.hires_steps or settings.steps)
            passes.append(("hr_prompt" if settings.hires_prompt else "prompt",
                           settings.hires_prompt or settings.prompt,
                           settings.hires_negative_prompt or settings.negative_prompt, {"hires_steps": hires_steps}))
        for field, prompt, negative, hires_step in passes:
            if (max(hires_step.values(), default=steps) + 1) * (len(prompt) + len(negative)) <= limit:
                continue
            plan = pass_schedules(prompt, negative, steps, **hires_step)
            total = sum(map(len, plan.positive_texts())) + sum(map(len, plan.negative_texts()))
            if total > limit:
                where = "the hires pass" if hires_step else "the first pass"
                raise RequestError(field, f"{field}'s schedule ([a:b:N] edits, [a|b] alternations) gives {where} "
                                   f"{total} characters of distinct texts to encode; the server limit is {limit} "
                                   "(ServeLimits.max_schedule_chars): use fewer edits or a shorter prompt")

    def detailer_units(self, alwayson_scripts: dict[str, Any]) -> tuple:
        """`alwayson_scripts.ADetailer.args` (the script's name in any case, as A1111 matches it) as
        `DetailerUnit`s, each detector found by name in `adetailer_dir` only and its steps and size within the
        limits; the other scripts are ignored."""
        from animegen.generate.detailer import find_detector, units_from_api_args

        script = next((v for k, v in (alwayson_scripts or {}).items() if str(k).lower() == "adetailer"), None)
        if script is None:
            return ()
        field = "alwayson_scripts"
        try:
            units = units_from_api_args(script.get("args", []) if isinstance(script, dict) else script)
        except AnimegenError as exc:
            raise RequestError(field, f"{field}: {exc}") from None
        dirs = [self.config.adetailer_dir] if self.config.adetailer_dir else []
        resolved = []
        for unit in units:
            try:
                path = find_detector(unit.model, dirs, allow_path=False)
            except AnimegenError as exc:
                raise RequestError(field, f"{field}: {exc}", status=404) from None
            if (unit.steps or 0) > self.limits.max_steps:
                raise RequestError(field, f"{field}: ADetailer steps {unit.steps} exceed this server's max_steps "
                                   f"{self.limits.max_steps}")
            if (unit.width or 0) > self.limits.max_width or (unit.height or 0) > self.limits.max_height:
                raise RequestError(field, f"{field}: ADetailer inpaint size {unit.width}x{unit.height} exceeds this "
                                   f"server's {self.limits.max_width}x{self.limits.max_height}")
            resolved.append(replace(unit, model=str(path)))
        return tuple(resolved)

    def controlnet_units(self, alwayson_scripts: dict[str, Any], init_image=None) -> tuple:
        """`alwayson_scripts.controlnet.args` (any case) as `ControlUnit`s (`api_controlnet.units_from_api_args`),
        each model found by name in `controlnet_dir` only and each image within the input pixel limit."""
        from animegen.generate.controlnet import find_controlnet
        from animegen.serve.api_controlnet import units_from_api_args
        from animegen.serve.codec import decode_image

        script = next((v for k, v in (alwayson_scripts or {}).items() if str(k).lower() == "controlnet"), None)
        if script is None:
            return ()
        field = "alwayson_scripts"
        try:
            return units_from_api_args(
                script.get("args", []) if isinstance(script, dict) else script, init_image=init_image,
                image=lambda data, where: decode_image(data, field=f"{field}: {where}",
                                                       max_pixels=self.limits.max_input_pixels),
                find_model=lambda name: find_controlnet(name, self.config.controlnet_dir))
        except AnimegenError as exc:
            raise RequestError(field, f"{field}: {exc}") from None

    @staticmethod
    def _check_noise(values: dict[str, Any]) -> None:
        """The A1111 options `randn_source` and `eta_noise_seed_delta`, when set, by the request's own rules."""
        from animegen.generate.rng import ensd_value, rng_source

        for key, check in (("randn_source", rng_source), ("eta_noise_seed_delta", ensd_value)):
            if values.get(key) is not None:
                try:
                    check(values[key], key)
                except AnimegenError as exc:
                    raise RequestError(key, str(exc)) from None

    def _check_hires_upscaler(self, name: str) -> str:
        """A built-in or a listed upscaler model's name, never a path (the generator finds it in the same folders)."""
        from animegen.generate.hires import find_hires_upscaler

        try:
            return find_hires_upscaler(name, self.catalog.upscaler_folders(), allow_path=False, field="hr_upscaler")[0]
        except AnimegenError as exc:
            raise RequestError("hr_upscaler", str(exc)) from None

    @staticmethod
    def style_preset(styles: list[str] | None, preset: str | None) -> str | None:
        """A1111's `styles: [name]` as the preset it names (`/sdapi/v1/prompt-styles` lists the presets as styles).

        At most one style: A1111 applies several styles one after another, each wrapping the prompt in its text
        (at its `{prompt}`, else appended with ", "), but a preset is not a concatenable prompt snippet: it
        orders tags (animagine moves 1girl first) and recommends a sampler, steps and size, so two presets have
        no combined meaning. A style next to a different `preset` than the default is refused for the same
        reason. No style (None, []) leaves `preset` as it is.
        """
        from animegen.prompts.presets import list_presets

        if not styles:
            return preset
        names = [p.name for p in list_presets()]
        valid = f"valid styles (animegen's prompt presets, GET /sdapi/v1/prompt-styles): {', '.join(names)}"
        if len(styles) > 1:
            raise RequestError("styles", f"styles {styles!r}: send one style, not {len(styles)}; animegen's styles "
                               f"are its prompt presets, which do not combine; {valid}")
        (style,) = styles
        if style not in names:
            raise RequestError("styles", f"unknown style {style!r}; {valid}")
        if preset not in (None, "", GenerationRequest.preset, style):
            raise RequestError("styles", f"style {style!r} and preset {preset!r} disagree: a style is a preset, "
                               "send one of the two")
        return style

    @staticmethod
    def _check_preset(preset: str) -> None:
        from animegen.prompts.presets import get_preset

        try:
            get_preset(preset)
        except ValueError as exc:
            raise RequestError("preset", str(exc)) from None

    def submit(self, request: GenerationRequest, *, model: CheckpointEntry | None = None,
               keep_model: bool = False, label: str = "txt2img") -> Future:
        """Queue a generation (QueueFullError when full); resolves to a `GenerationResult`."""
        return self.queue.generate(request, model=model, keep_model=keep_model, label=label)

    def close(self) -> None:
        self.queue.close()


# GenerationRequest field → the A1111 request field a client actually sent.
_A1111_FIELD = {"strength": "denoising_strength", "n": "n_iter", "hires_scale": "hr_scale",
                "hires_steps": "hr_second_pass_steps", "hires_denoise": "denoising_strength",
                "sampler": "sampler_name", "clip_skip": "CLIP_stop_at_last_layers", "hires_upscaler": "hr_upscaler",
                "hires_resize_x": "hr_resize_x", "hires_resize_y": "hr_resize_y", "hires_cfg_scale": "hr_cfg"}


def _field_of(message: str) -> str:
    """The request field a GenerationRequest.validate() message is about (it starts with the name)."""
    word = message.split(" ", 1)[0]
    return _A1111_FIELD.get(word, word) if word.isidentifier() else "request"

