"""The generation engine: one loaded model, many requests.

It holds a diffusers Stable Diffusion pipeline for its modules (text encoders, UNet, VAE) and samples
as A1111 1.10 does (`kpipeline`: A1111's samplers, schedule types and noise over that UNet), from
A1111-weighted prompt embeddings (`animegen.prompts.encode`). Every pass (txt2img, img2img, the hires pass) draws
its starting, ancestral and SDE noise from a fresh `rng.ImageRNG` of the request's source ("RNG": GPU, CPU, NV)
and ENSD, one generator per image as A1111, so image k of a batch equals image k generated alone with seed+k
and the infotext records the source. `skip` (A1111's /skip) ends the current batch's sampling early, decoding
its last denoised prediction (a skipped first pass goes through the hires upscale unsampled, as A1111), and the
next batch runs; `interrupt` ends the whole request. img2img with a mask is A1111's inpainting
(`generate.inpaint`: the mask planned once per request, its latent mask blended in while sampling, the original
pasted back over each result, a 9-channel model given the mask and masked image). NaN/inf in a pass's final latents or
decoded pixels is an error naming the stage (`generate.nan_check`, A1111's NansException), unless
`nan_check=False`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from animegen import __version__
from animegen.core.errors import AnimegenError
from animegen.core.keywords import checked_keywords
from animegen.generate import hires as hr
from animegen.generate.conditioning import PromptConditioning
from animegen.generate.controlnet import controlnet_fields
from animegen.generate.detailer import detailer_fields, run_detailer
from animegen.generate.infotext import (
    format_infotext,
    inpaint_fields,
    noise_fields,
    save_png,
    schedule_type_label,
)
from animegen.generate.inpaint import InpaintPlan, conditioning_mask, plan_inpaint
from animegen.generate.kpipeline import KPipeline
from animegen.generate.nan_check import check_output
from animegen.generate.request import GenerationRequest, ResolvedRequest, lora_tag_text, resolve
from animegen.generate.rng import ImageRNG
from animegen.generate.samplers import img2img_steps, resolve_sampler
from animegen.models.family import family_of

Progress = Callable[[int, int], None]
_MERGED_ATTR = "_animegen_merged_loras"  # on the pipe: (LoRA files, mtimes and weights merged, tensors changed)


@dataclass
class GeneratedImage:
    """One image a `Generator` made, with what made it.

    Attributes:
        image: the 8-bit RGB PIL image.
        seed: its seed (the request's seed + its index).
        infotext: A1111's "parameters" text (prompt, negative prompt, settings); `save` writes it into the PNG and
            `request_from_infotext` rebuilds the request from it.
        parameters: the infotext's settings as a dict, in A1111's order (None values are left out of the text).
        array: float32 HxWx3 pixels in [0, 1], before 8-bit quantisation (None when not kept); inpainted images
            are pasted back over the original in 8 bits, as A1111 does, so theirs is that image / 255.
    """

    image: Image.Image
    seed: int
    infotext: str
    parameters: dict[str, Any] = field(default_factory=dict)
    array: np.ndarray | None = None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the image as a PNG with its infotext, as A1111 does (atomically; `infotext.save_png`); its path."""
        return save_png(self, path)


def _request_field_hint(keyword: str) -> str | None:
    """For a keyword given to `Generator.__call__` that belongs in the request: where it goes instead."""
    from dataclasses import fields

    from animegen.generate.request import REQUEST_ALIASES

    field_name = REQUEST_ALIASES.get(keyword, keyword)
    if field_name in {f.name for f in fields(GenerationRequest)}:
        return f"{field_name} is a GenerationRequest field: generator(GenerationRequest(prompt, {field_name}=...))"
    return None


class GenerationInterrupted(RuntimeError):
    """Raised when an interrupt arrives before any image of the request was finished."""


@checked_keywords
class Generator:
    """Holds one model (plus optional VAE override) and generates from `GenerationRequest`s.

    `Generator(model)` loads the model and applies the device's speed-up defaults (`generate/speed.py`).
    `Generator(pipe=existing)` borrows a pipeline the caller owns (a training run, a benchmark) and never
    changes it: no speed-ups unless `speedups=` asks for them, since fusing QKV or changing the memory
    format would swap the very modules the caller trains. Its infotext `Model:` is `model_name=`, else
    the name of the folder/file the pipe was loaded from (`name_or_path`). `nan_check=False` returns
    images with NaN/inf pixels instead of raising (A1111's `--disable-nan-check`). Textual-inversion
    embeddings in `embeddings_dir` (or `.embeddings.register(path)`) are used by name in either prompt.

    Arguments (all but `model` keyword-only; a typo'd one raises `UnknownKeywordError` naming the nearest):
        `model`: what to load: a diffusers folder, a Civitai/A1111 `.safetensors` checkpoint or a hub id in the
            local Hugging Face cache. With `pipe`, only the name recorded as `Model:` (nothing is loaded).
        `vae`: a VAE (folder or file) to load in place of the model's; with `pipe`, only recorded as `VAE:`.
        `device`, `dtype`: where and in what precision to load (default: CUDA when there is one, in bf16 or
            fp16 there; else the CPU in fp32); unused with `pipe`.
        `allow_pickle`: allow pickled files (.ckpt/.pt/.bin checkpoints, LoRAs, embeddings); off by default,
            since unpickling runs code.
        `lora_dir`: folder whose `*.safetensors` LoRAs `<lora:name:w>` tags and `GenerationRequest.loras` find
            by name (`register_lora` adds single files).
        `pipe`: an already loaded diffusers SD1/SDXL pipeline to borrow instead of loading `model`.
        `preset_file`: a TOML file of extra prompt presets (`GenerationRequest.preset` names them).
        `speedups`: a `SpeedupConfig` (or None: the device's defaults; for a lent pipe, none at all).
        `model_name`: the infotext's `Model:`; default: the model's file or folder name. `Model hash:` is the
            loaded file's (a lent pipe has none: the field is left out, as A1111 leaves unknown fields out).
        `nan_check`: raise on NaN/inf latents or pixels (default), naming the stage.
        `embeddings_dir`: folder of textual-inversion embeddings usable by name in prompts.
        `upscaler_dir`: folder (or list of folders, searched in order) of model upscalers (ESRGAN / Real-ESRGAN /
            SRVGG `.safetensors`; `.pth` with `allow_pickle`) that `hires_upscaler` names by file stem
            (`generate.hires.find_hires_upscaler`; a file's path works too).

    `detector_dirs` (an attribute, empty at first) lists the folders whose ONNX detectors `GenerationRequest.detailers`
    name by file name (`generate.detailer.find_detector`); a detector given by path needs none.

    Use: `generator(GenerationRequest("1girl", steps=20))` returns `GeneratedImage`s (`.save(path)` writes the
    PNG with its infotext); `register_lora`, `available_loras` and `resolve_lora` manage LoRAs by name;
    `default_size` is the model family's image size; `sampling()` gives the sampler pipeline over its modules.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, vae: str | os.PathLike | None = None,
                 device: str | None = None, dtype: str | torch.dtype | None = None, allow_pickle: bool = False,
                 lora_dir: str | os.PathLike | None = None, pipe=None, preset_file: str | os.PathLike | None = None,
                 speedups=None, model_name: str | None = None, nan_check: bool = True,
                 embeddings_dir: str | os.PathLike | None = None,
                 upscaler_dir: str | os.PathLike | list[str | os.PathLike] | None = None):
        from animegen.models import loading

        if model is None and pipe is None:
            raise TypeError("Generator needs a model (path or hub id) to load, or pipe= an already loaded pipeline")
        source = model if model is not None else getattr(pipe, "name_or_path", None)
        self.model = None if source is None else str(source)
        self.pipe = pipe if pipe is not None else loading.load_pipeline(
            model, vae=vae, device=device, dtype=dtype, allow_pickle=allow_pickle)
        self.model_name = model_name or (loading.model_name(source) if source else None)
        self.model_hash = loading.model_hash(model) if pipe is None else None
        self.vae_name = Path(vae).stem if vae else None
        self.lora_dir = Path(lora_dir) if lora_dir else None
        self.allow_pickle = allow_pickle  # also for pickled LoRA files (.pt/.ckpt/.bin) and embeddings (.pt/.bin)
        from animegen.prompts.embeddings import EmbeddingLibrary

        self.embeddings = EmbeddingLibrary(embeddings_dir, allow_pickle=allow_pickle)
        self.preset_file = preset_file
        self.nan_check = nan_check
        self.upscaler_dirs = [Path(d) for d in (upscaler_dir if isinstance(upscaler_dir, list | tuple) else
                                                [upscaler_dir] if upscaler_dir else [])]
        self._known_upscalers: dict[str, Path] = {}  # model upscalers given by path, then known by their stem
        self.family = family_of(self.pipe)  # default size, and what infotext / UIs show
        self._known_loras: dict[str, Path] = {}
        self._lora_cache: dict[tuple[str, int], Any] = {}
        self._kpipe: KPipeline | None = None
        self.lock = threading.RLock()  # re-entrant: the detailer post-pass inpaints through `self(...)`
        self.detector_dirs: list[Path] = []  # folders `GenerationRequest.detailers` find detectors in by name
        from animegen.generate.speed import SpeedupConfig, apply_speedup_config

        # on CPU the default config changes nothing; on CUDA it turns on channels_last and fused QKV
        self.speedup_report = None  # a lent pipe is left exactly as it was unless speed-ups are asked for
        if pipe is None or speedups is not None:
            self.speedup_report = apply_speedup_config(self.pipe, speedups or SpeedupConfig())

    # ---- LoRA resolution -------------------------------------------------------------------------
    def register_lora(self, path: str | os.PathLike) -> str:
        """Make a LoRA file resolvable by its name (file stem), e.g. for `<lora:name:w>` tags."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"LoRA file {path} not found")
        self._known_loras[path.stem] = path
        return path.stem

    def available_loras(self) -> dict[str, Path]:
        """{name: file} of every LoRA a prompt tag can name: registered files, then `lora_dir`'s (recursively)."""
        found = dict(self._known_loras)
        if self.lora_dir and self.lora_dir.is_dir():
            for p in sorted(self.lora_dir.rglob("*.safetensors")):
                found.setdefault(p.stem, p)
        return found

    def resolve_lora(self, ref: str, *, allow_path: bool = True) -> Path:
        """A LoRA by file path (`allow_path`, for trusted callers) or by name from `lora_dir`/registered files.

        Prompt tags (`<lora:name:w>`) resolve by name only, so a prompt cannot point at arbitrary files.
        """
        path = Path(ref).expanduser()
        if allow_path and path.is_file():
            return path
        known = self.available_loras()
        if ref in known:
            return known[ref]
        where = f"in --lora-dir {self.lora_dir}" if self.lora_dir else "(no --lora-dir given)"
        names = ", ".join(sorted(known)) or "none"
        raise FileNotFoundError(f"LoRA {ref!r} is neither a file nor a known name {where}; known LoRAs: {names}")

    def _read_lora(self, path: Path):
        from animegen.models.lora import read_lora

        key = (str(path.resolve()), path.stat().st_mtime_ns)
        if key not in self._lora_cache:
            try:
                self._lora_cache[key] = read_lora(path, allow_pickle=self.allow_pickle)
            except AnimegenError:
                raise  # already names the file and the fix
            except Exception as e:
                raise AnimegenError(f"cannot read LoRA {path}: {e}") from e
        return self._lora_cache[key]

    def _prepare_loras(self, resolved: ResolvedRequest) -> tuple[str, str, list[tuple[str, Path, Any]]]:
        """Strip every `<name:...>` tag from the prompt (as A1111), collect every LoRA (its multiplier a float
        or A1111's te/unet split), warn about other networks, and return the recorded prompt too."""
        from animegen.prompts.parser import parse_extra_networks

        networks = parse_extra_networks(resolved.prompt)
        networks.warn_ignored()
        clean_prompt, recorded = networks.text, resolved.prompt
        loras = [(t.name, self.resolve_lora(t.name, allow_path=False), t.multiplier) for t in networks.loras]
        for ref, weight in resolved.loras:
            path = self.resolve_lora(ref)
            self._known_loras.setdefault(path.stem, path)
            loras.append((path.stem, path, weight))
            recorded += " " + lora_tag_text(path.stem, weight)
        from animegen.prompts.conventions import warn_missing_triggers  # issue #16: the LoRA's trigger words

        for name, path, _ in loras:
            warn_missing_triggers(name, path, clean_prompt)
        return clean_prompt, recorded, loras

    def _apply_loras(self, loras: list[tuple[str, Path, float]]) -> None:
        """Merge the request's LoRAs, unless the same files at the same weights are still merged (recorded on
        the pipe, which engines lent the same pipe share)."""
        from animegen.models import lora  # apply_loras and remove_loras both refresh fused QKV copies

        wanted = tuple((str(path.resolve()), path.stat().st_mtime_ns, repr(weight)) for _, path, weight in loras)
        if self.pipe.__dict__.get(_MERGED_ATTR) == (wanted, lora.applied_lora_count(self.pipe)):
            return
        self.pipe.__dict__.pop(_MERGED_ATTR, None)
        if loras:
            lora.apply_loras(self.pipe, [(self._read_lora(path), weight) for _, path, weight in loras])
        else:
            lora.remove_loras(self.pipe)
        self.pipe.__dict__[_MERGED_ATTR] = (wanted, lora.applied_lora_count(self.pipe))

    # ---- generation ------------------------------------------------------------------------------
    @property
    def default_size(self) -> int:
        """The model family's default image side in pixels (512 for SD1/SD2, 1024 for SDXL)."""
        return self.family.default_size

    @checked_keywords(hint=_request_field_hint)
    def __call__(self, request: GenerationRequest, *, progress: Progress | None = None,
                 interrupt: threading.Event | None = None,
                 skip: threading.Event | None = None) -> list[GeneratedImage]:
        with self.lock:
            return self._generate(request, progress, interrupt, skip)

    def _generate(self, request: GenerationRequest, progress: Progress | None,
                  interrupt: threading.Event | None, skip: threading.Event | None = None) -> list[GeneratedImage]:
        resolved = resolve(request, self.default_size, self.preset_file, model=self.model)
        choices = self._choices(resolved)  # fail before any work
        if resolved.hires:  # a model upscaler's name (or path, recorded by its stem); unknown names fail here
            resolved = replace(resolved, hires_upscaler=self._hires_upscaler(resolved.hires_upscaler)[0])
        text_prompt, recorded_prompt, loras = self._prepare_loras(resolved)
        self._apply_loras(loras)
        # prompt editing, alternation and AND: planned and encoded per pass (generate/conditioning.py)
        conditioning = PromptConditioning(self.pipe, text_prompt, resolved.negative_prompt, resolved.clip_skip,
                                          resolved.emphasis, self.embeddings)
        hires_conditioning = self._hires_conditioning(resolved, conditioning, choices[0])
        ti_hashes = self.embeddings.infotext_hashes(self.pipe, [text_prompt, resolved.negative_prompt],
                                                    emphasis=resolved.emphasis)

        plan = self._inpaint_plan(resolved)
        tracker = _StepTracker(self._total_steps(resolved), progress, interrupt, skip)
        results: list[GeneratedImage] = []
        seeds = list(resolved.seeds)
        for start in range(0, len(seeds), resolved.batch_size):
            if tracker.interrupted or (interrupt is not None and interrupt.is_set()):
                tracker.interrupted = True
                break  # like A1111: images of the interrupted batch come back half-denoised, later ones never start
            tracker.new_batch()  # like A1111: a skip asked before this batch's sampling is forgotten
            batch = seeds[start:start + resolved.batch_size]
            subseeds = list(resolved.subseeds[start:start + resolved.batch_size])
            conds = [c.repeat_interleave(len(batch)) if c is not None else None
                     for c in (conditioning, hires_conditioning)]
            arrays = self._run_batch(resolved, choices, batch, subseeds, conds, tracker, plan)
            for seed, subseed, array in zip(batch, subseeds, arrays):
                params = self._parameters(resolved, choices, seed, subseed, loras, ti_hashes, plan)
                info = format_infotext(recorded_prompt, resolved.negative_prompt, params)
                image = Image.fromarray((np.clip(array, 0, 1) * 255).astype("uint8"))  # A1111 truncates
                if plan is not None and plan.overlay is not None:  # the original pasted back, in 8 bits as A1111
                    image = plan.finish(image)
                    array = np.asarray(image, dtype=np.float32) / 255.0
                if resolved.detailers:  # ADetailer's post-pass, each detection inpainted again (generate.detailer)
                    image = run_detailer(self, resolved, image, resolved.detailers, seed=seed, subseed=subseed,
                                         detector_dirs=self.detector_dirs, interrupt=interrupt)
                    array = np.asarray(image, dtype=np.float32) / 255.0
                results.append(GeneratedImage(image, seed, info, params, array))
        if not results and tracker.interrupted:
            raise GenerationInterrupted("generation interrupted before the first image finished")
        return results

    def _total_steps(self, r: ResolvedRequest) -> int:
        per_image = img2img_steps(r.steps, r.strength, False)[1] + 1 if r.init_image is not None else r.steps
        if r.hires:
            per_image += r.hires_steps or r.steps  # A1111 runs exactly the hires steps
        batches = -(-len(r.seeds) // r.batch_size)
        return max(1, per_image * batches)

    def sampling(self) -> KPipeline:
        """Our A1111 samplers over this model's UNet and VAE (built once; the pipe is left as it is)."""
        if self._kpipe is None:
            self._kpipe = KPipeline(self.pipe, is_sdxl=self.family.is_sdxl)
        return self._kpipe

    @staticmethod
    def _choices(r: ResolvedRequest):
        """(first pass, hires pass) samplers; the hires one inherits sampler and schedule, as A1111's hr_sampler_name
        / hr_scheduler do ("Use same ...")."""
        choice = resolve_sampler(r.sampler, r.schedule_type)
        hires = resolve_sampler(r.hires_sampler or choice.sampler.name, r.hires_schedule_type or choice.schedule.label)
        return choice, hires

    def _hires_conditioning(self, r: ResolvedRequest, conditioning, first_choice):
        """The hires pass's prompts (A1111's hr_prompt / hr_negative_prompt, "" = the first pass's), scheduled after
        the first pass as A1111 schedules them; None without a hires pass.

        A1111 activates the hires prompt's own extra networks for the second pass; animegen merges one LoRA set per
        request, so a hires prompt whose LoRA tags differ from the prompt's is refused.
        """
        from animegen.prompts.parser import parse_extra_networks

        if not r.hires:
            return None
        if not (r.hires_prompt or r.hires_negative_prompt):
            return conditioning.hires_pass(first_choice, r.steps)
        main, hires = parse_extra_networks(r.prompt), parse_extra_networks(r.hires_prompt or r.prompt)
        if [(t.name, t.multiplier) for t in main.loras] != [(t.name, t.multiplier) for t in hires.loras]:
            raise AnimegenError("hires_prompt's <lora:...> tags differ from the prompt's; animegen applies one LoRA "
                                "set to both passes: give the hires prompt the same tags")
        return replace(conditioning, prompt=hires.text,
                       negative=r.hires_negative_prompt or r.negative_prompt).hires_pass(first_choice, r.steps)

    @staticmethod
    def _inpaint_plan(r: ResolvedRequest) -> InpaintPlan | None:
        """The request's mask planned once (`inpaint.plan_inpaint`); None without a mask."""
        if r.mask is None:
            return None
        return plan_inpaint(r.init_image, r.mask, width=r.width, height=r.height, mask_blur=r.mask_blur,
                            inpainting_fill=r.inpainting_fill, inpaint_full_res=r.inpaint_full_res,
                            inpaint_full_res_padding=r.inpaint_full_res_padding,
                            inpainting_mask_invert=r.inpainting_mask_invert)

    def _img2img(self, kp: KPipeline, r: ResolvedRequest, choice, conditioning, seeds: list[int],
                 subseeds: list[int], plan: InpaintPlan | None, common: dict) -> torch.Tensor:
        """An img2img pass; with a mask A1111's inpainting: the planned (cropped, filled) image encoded, the masked
        latents replaced for "latent noise" (the seeds' first noise) and "latent nothing" (zeros), the latent mask
        blended in at every step, and a 9-channel model given the mask and the masked image."""
        if plan is None:
            image = r.init_image.convert("RGB").resize((r.width, r.height), Image.LANCZOS)
        else:
            image = plan.image
        init = kp.encode([image] * len(seeds))
        extra: dict[str, Any] = {}
        if plan is not None and plan.mask is not None:
            mask = torch.from_numpy(plan.latent_mask(init.shape[-1], init.shape[-2]))[None, None].to(init)
            if plan.fill == "latent noise":
                noise = self._noise(kp, r, seeds, subseeds).first_noise(tuple(init.shape)).to(init)
                init = init * (1 - mask) + noise * mask
            elif plan.fill == "latent nothing":
                init = init * (1 - mask)
            extra["latent_mask"] = mask
            if kp.inpainting:
                extra["image_conditioning"] = kp.image_conditioning(
                    plan.image, conditioning_mask(plan.mask, r.width, r.height), r.width, r.height)
        return kp.img2img(choice, conditioning, seeds, init, steps=r.steps, strength=r.strength, **common, **extra)

    def _run_batch(self, r: ResolvedRequest, choices, seeds: list[int], subseeds: list[int], conds,
                   tracker: _StepTracker, plan: InpaintPlan | None = None) -> np.ndarray:
        """One batch through A1111's sampling path: txt2img or img2img (inpainting with `plan`), then the hires
        pass."""
        kp, (choice, hires_choice), (conditioning, hires_conditioning) = self.sampling(), choices, conds
        common = dict(cfg_scale=r.cfg_scale, guidance_rescale=r.guidance_rescale, callback=tracker.on_step,
                      noise=self._noise(kp, r, seeds, subseeds), controlnet_units=r.controlnet_units)
        latents = None
        with tracker.pass_of(r.steps if r.init_image is None else img2img_steps(r.steps, r.strength, False)[1] + 1):
            if r.init_image is not None:
                latents = self._img2img(kp, r, choice, conditioning, seeds, subseeds, plan, common)
            else:
                latents = kp.txt2img(choice, conditioning, seeds, width=r.width, height=r.height, steps=r.steps,
                                     **common)
        latents = self._final(tracker, latents)
        if not r.hires or tracker.interrupted:
            out = kp.decode(latents)
            self._check(tracker, out, seeds)
            return np.asarray(out, dtype=np.float32)
        # A1111's latent upscalers never decode the first pass; the pixel ones decode it (NaN-checked first)
        first = None if r.hires_upscaler in hr.LATENT_UPSCALERS else kp.decode(latents)
        self._check(tracker, first, seeds)
        out = self._hires(kp, hires_choice, r, seeds, subseeds, latents, first, hires_conditioning or conditioning,
                          tracker)
        self._check(tracker, out, seeds)
        return np.asarray(out, dtype=np.float32)

    @staticmethod
    def _noise(kp: KPipeline, r: ResolvedRequest, seeds: list[int], subseeds: list[int]) -> ImageRNG:
        """One pass's noise: a new generator per image of the request's source, ENSD and variation seed (A1111
        makes a new ImageRNG for the hires pass too)."""
        return ImageRNG(seeds, source=r.rng, eta_noise_seed_delta=r.eta_noise_seed_delta, subseeds=subseeds,
                        subseed_strength=r.subseed_strength, device=kp.device)

    @staticmethod
    def _final(tracker: _StepTracker, latents: torch.Tensor) -> torch.Tensor:
        """A pass's result: an interrupted or skipped pass gives its last denoised prediction, as A1111 does."""
        if (tracker.interrupted or tracker.skipped) and tracker.last_denoised is not None:
            latents = tracker.last_denoised
        tracker.latents = latents
        return latents

    def _hires(self, kp: KPipeline, choice, r: ResolvedRequest, seeds: list[int], subseeds: list[int],
               latents: torch.Tensor, first: np.ndarray | None, conditioning, tracker: _StepTracker) -> np.ndarray:
        """A1111's `sample_hr_pass`: upscale the first pass to the target (`generate.hires`: latents interpolated,
        or 8-bit pixels resized and re-encoded), crop, then img2img at `hires_denoise` for exactly the hires steps
        (A1111 hands them to `sample_img2img`, whose fixed-steps rule runs that many), with fresh per-seed noise."""
        target = hr.hires_target(r.width, r.height, r.hires_scale, r.hires_resize_x, r.hires_resize_y)
        if first is None:
            init = hr.upscale_latents(latents, target, r.hires_upscaler)
        else:
            pixels = [Image.fromarray((np.clip(a, 0, 1) * 255).astype("uint8")) for a in first]  # A1111 truncates
            upscaler = self._hires_upscaler(r.hires_upscaler)[1] or r.hires_upscaler  # a model's file, or built-in
            init = kp.encode([hr.upscale_image(im, target, upscaler, allow_pickle=self.allow_pickle, device=kp.device)
                              for im in pixels])
        init = hr.crop_latents(init, target)
        steps = r.hires_steps or r.steps
        with tracker.pass_of(steps):
            latents = init  # skipped in the first pass: A1111's hires pass stops at once, returning its start
            if not tracker.skipped:
                latents = kp.img2img(choice, conditioning, seeds, init, steps=steps, strength=r.hires_denoise,
                                     cfg_scale=r.hires_cfg_scale, guidance_rescale=r.guidance_rescale,
                                     fixed_steps=True, callback=tracker.on_step,
                                     noise=self._noise(kp, r, seeds, subseeds), size=(target.width, target.height),
                                     controlnet_units=r.controlnet_units)  # the hint fitted to the target, as A1111
        return kp.decode(self._final(tracker, latents))

    def _hires_upscaler(self, ref: str) -> tuple[str, Path | None]:
        """(name, model file or None) of a hires upscaler (`hires.find_hires_upscaler` over `upscaler_dir`)."""
        name, path = hr.find_hires_upscaler(ref, self.upscaler_dirs, known=self._known_upscalers,
                                            allow_pickle=self.allow_pickle)
        if path is not None:
            self._known_upscalers[name] = path  # the file this name means now (a path given replaces it)
        return name, path

    def _check(self, tracker: _StepTracker, images, seeds: list[int]) -> None:
        """The NaN check of one pass: its final latents (unet), then its decoded pixels (vae)."""
        if self.nan_check:
            check_output(self.pipe, tracker.latents, images, seeds)
        tracker.latents = None

    def _parameters(self, r: ResolvedRequest, choices, seed: int, subseed: int, loras: list[tuple[str, Path, float]],
                    ti_hashes: str | None = None, plan: InpaintPlan | None = None) -> dict[str, Any]:
        """The infotext fields, in A1111 1.10's order (`infotext` lists them and how they read back)."""
        from animegen.models.lora import lora_hash

        choice, hires_choice = choices
        variation = r.subseed_strength > 0
        ensd = uses_ensd(choice) or (r.hires and uses_ensd(hires_choice))
        params: dict[str, Any] = {
            "Steps": r.steps,
            "Sampler": choice.sampler.name,
            "Schedule type": schedule_type_label(choice),
            "CFG scale": f"{r.cfg_scale:g}",
            "Seed": seed,
            "Size": f"{r.width}x{r.height}",
            "Model hash": self.model_hash,
            "Model": self.model_name,
            "VAE": self.vae_name,
            "Variation seed": subseed if variation else None,
            "Variation seed strength": f"{r.subseed_strength:g}" if variation else None,
            "Denoising strength": r.strength if r.init_image is not None else (r.hires_denoise if r.hires else None),
            "Conditional mask weight": "1.0" if self.sampling().inpainting else None,
            **inpaint_fields(r, plan),
            "Clip skip": r.clip_skip if r.clip_skip > 1 else None,
            **noise_fields(r.rng, r.eta_noise_seed_delta, sampler_uses_ensd=ensd),
            "Emphasis": r.emphasis if r.emphasis != "Original" else None,
            "Rescale CFG": f"{r.guidance_rescale:g}" if r.guidance_rescale > 0 else None,
            **(self._hires_parameters(r, choice, hires_choice) if r.hires else {}),
        }
        if loras:
            params["Lora hashes"] = ", ".join(f"{name}: {lora_hash(path)}" for name, path, _ in loras)
        if ti_hashes:
            params["TI hashes"] = ti_hashes
        params.update(controlnet_fields(r.controlnet_units))  # the extension's "ControlNet i" fields
        params.update(detailer_fields(r.detailers))
        params["Version"] = f"animegen {__version__}"
        return params


    @staticmethod
    def _hires_parameters(r: ResolvedRequest, choice, hires_choice) -> dict[str, Any]:
        """A1111's hires fields: each written only when it differs from the first pass's (Forge's Hires CFG Scale
        likewise); "Hires schedule type" whenever it is not the first pass's written label, which is also what
        reading an infotext without it assumes."""
        label, hires_label = schedule_type_label(choice), schedule_type_label(hires_choice)
        resize = bool(r.hires_resize_x or r.hires_resize_y)
        return {
            "Hires sampler": hires_choice.sampler.name if hires_choice.sampler.name != choice.sampler.name else None,
            "Hires prompt": r.hires_prompt if r.hires_prompt not in ("", r.prompt) else None,
            "Hires negative prompt": r.hires_negative_prompt if r.hires_negative_prompt not in ("", r.negative_prompt)
            else None,
            "Hires schedule type": hires_label if hires_label != label else None,
            "Hires CFG Scale": f"{r.hires_cfg_scale:g}" if r.hires_cfg_scale != r.cfg_scale else None,
            "Hires upscale": None if resize else f"{r.hires_scale:g}",
            "Hires resize": f"{r.hires_resize_x}x{r.hires_resize_y}" if resize else None,
            "Hires steps": r.hires_steps or None,
            "Hires upscaler": r.hires_upscaler,
        }


def uses_ensd(choice) -> bool:
    """Whether ENSD can change a sampler's (`SamplerChoice`) image: it draws from the image generators after the
    first draw. A1111's `uses_ensd` samplers (the ancestral ones), plus Restart and LCM, whose re-noising A1111
    draws from the same generators without flagging them (so its infotext drops an ENSD that changed the image)."""
    return bool(choice.sampler.options.get("uses_ensd")) or choice.sampler.name in ("Restart", "LCM")


class _Interrupt(Exception):
    """Raised from a sampler callback to stop the pass (caught by `_StepTracker.pass_of`)."""


class _StepTracker:
    """The samplers' per-step callback: reports progress, stops a pass on interrupt or skip (keeping its last
    denoised prediction, which A1111 returns then), and holds the pass's final latents for the NaN check."""

    def __init__(self, total: int, progress: Progress | None, interrupt: threading.Event | None,
                 skip: threading.Event | None = None):
        self.total, self.done, self.progress, self.interrupt, self.skip = total, 0, progress, interrupt, skip
        self.interrupted = False
        self.skipped = False  # this batch was skipped: its passes stop, the next batch runs
        self.latents = None
        self.last_denoised = None

    def _report(self, done: int) -> None:
        done = min(done, self.total)
        if done != self.done:
            self.done = done
            if self.progress is not None:
                self.progress(self.done, self.total)

    def on_step(self, info: dict) -> None:
        self.last_denoised = info["denoised"]
        self._report(self.done + 1)
        if self.interrupt is not None and self.interrupt.is_set():
            self.interrupted = True
            raise _Interrupt
        if self.skip is not None and self.skip.is_set():
            self.skipped = True
            raise _Interrupt

    def new_batch(self) -> None:
        """A1111 clears `state.skipped` as each batch starts."""
        self.skipped = False
        if self.skip is not None:
            self.skip.clear()

    @contextmanager
    def pass_of(self, steps: int):
        """One sampling pass of `steps` reported steps: a sampler that calls back more or fewer times still
        ends the pass at its share; an interrupt ends it early (a skip too, counting the pass as done)."""
        start, self.last_denoised = self.done, None
        try:
            yield
        except _Interrupt:
            if self.interrupted:
                return
        self._report(start + steps)
