"""A1111-style txt2img / img2img over a diffusers pipeline's modules, with our samplers.

Contract. `KPipeline(pipe, is_sdxl=...)` borrows a diffusers SD1 / SDXL pipeline's UNet and VAE (it
changes neither: no scheduler is swapped, nothing is moved or cast for good) and runs
`samplers.sample_txt2img` / `sample_img2img` on latents: the UNet sees the conditioning of a
`prompts.encode.ConditioningPair`, or per denoiser call that of a `conditioning.PromptConditioning` (A1111's
prompt editing, alternation and AND; all AND parts and the negative in one UNet batch); SDXL adds pooled
embeddings and A1111's size conditioning (original = target = the image size, crop 0, for positive and
negative alike); the noise schedule is the model's
scheduler config read by `schedules.DiscreteSchedule`; latents are `scaling_factor * VAE latents` and
decoded pixels are (x + 1) / 2 clamped to [0, 1], as A1111 and diffusers do. A half-precision VAE whose
config asks for `force_upcast` runs in float32 for that call only.

Inpainting. `img2img(latent_mask=)` blends the init latents back in at every step (`samplers.sample_img2img`).
A 9-channel inpainting UNet (`models.detect.is_inpainting_unet`) gets [latents, mask, masked-image latents]
as its input (A1111's c_concat and diffusers' order): `image_conditioning(image, mask)` builds the last five
channels (`generate.inpaint`'s conditioning mask, the VAE latents of image * (1 - mask)); a pass given none
(txt2img, img2img without a mask, the hires pass) is conditioned on a full mask over a gray image, as A1111's
"inpainting model used for txt2img".

ControlNet. `txt2img` / `img2img(controlnet_units=)` add the units' residuals to every UNet call of the pass
(`generate.controlnet.ControlRun`: hints fitted to the pass size, weights, guidance range by A1111's sampling step,
control modes); without units, or while none is active, the UNet call is exactly the plain one.

`encode` takes images at their own size (a hires target need not be a multiple of 8: the VAE's strides drop
the rest, as in A1111) and `img2img(size=...)` is SDXL's size conditioning for the hires pass (A1111 conditions
it on the upscale target). Where we differ from A1111: img2img encodes the init image to the VAE posterior's mean, where A1111
draws a posterior sample from the global torch RNG (not reproducible from the seed; the difference is
the VAE's tiny posterior std).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from animegen.generate.conditioning import PromptConditioning, schedule_steps
from animegen.generate.controlnet import ControlRun, ControlUnit, mark_uncond
from animegen.generate.denoiser import CFGDenoiser
from animegen.generate.rng import ImageRNG
from animegen.generate.samplers import SamplerChoice, img2img_steps, sample_img2img, sample_txt2img
from animegen.generate.schedules import DiscreteSchedule
from animegen.models.detect import is_inpainting_unet


class KPipeline:
    """Sampling over one pipeline's UNet and VAE; see the module docstring."""

    def __init__(self, pipe, *, is_sdxl: bool, zero_terminal_snr: bool | None = None):
        self.pipe, self.is_sdxl = pipe, is_sdxl
        config = dict(pipe.scheduler.config)
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.schedule = DiscreteSchedule.from_config(config, is_sdxl=is_sdxl, zero_terminal_snr=zero_terminal_snr)
        self.inpainting = is_inpainting_unet(pipe.unet)
        self._full_mask: dict[tuple[int, int], torch.Tensor] = {}  # latent (h, w) -> txt2img image conditioning

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    # ---- the network ---------------------------------------------------------------------------------------
    def _cond(self, embeds: torch.Tensor, pooled: torch.Tensor | None, width: int, height: int) -> dict:
        """The UNet's conditioning for a batch of embeddings (SDXL: pooled and A1111's size conditioning)."""
        cond = {"encoder_hidden_states": embeds}
        if self.is_sdxl:
            time_ids = torch.tensor([[height, width, 0, 0, height, width]] * embeds.shape[0], dtype=torch.float32)
            cond.update(text_embeds=pooled, time_ids=time_ids)
        return {k: v.to(self.device) for k, v in cond.items()}

    def _conditions(self, conditioning, width: int, height: int, steps: int, choice: SamplerChoice):
        """(cond, uncond) for the denoiser: fixed dicts for a `ConditioningPair`, per-call functions for a
        `conditioning.PromptConditioning` (prompt editing, alternation, AND; see that module)."""
        if not isinstance(conditioning, PromptConditioning):
            return (self._cond(conditioning.prompt_embeds, conditioning.pooled_prompt_embeds, width, height),
                    self._cond(conditioning.negative_prompt_embeds, conditioning.negative_pooled_prompt_embeds,
                               width, height))
        plan = conditioning.for_pass(schedule_steps(choice, steps))

        def batch(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.expand(plan.batch, *t.shape[1:])

        rows = {r: self._cond(batch(plan.embeds[r:r + 1]), batch(None if plan.pooled is None else
                                                                   plan.pooled[r:r + 1]), width, height)
                for r in plan.rows()}

        def parts(step: int) -> list[tuple[dict, float]]:
            return [(rows[r], w) for r, w in plan.at(step)[0]]

        return parts, lambda step: rows[plan.at(step)[1]]

    def _unet_fn(self, x: torch.Tensor, t: torch.Tensor, cond: dict, control: ControlRun | None = None) -> torch.Tensor:
        unet = self.pipe.unet
        dtype = unet.dtype
        extra = {}
        if "text_embeds" in cond:
            extra["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"].to(dtype),
                                          "time_ids": cond["time_ids"].to(dtype)}
        embeds, t = cond["encoder_hidden_states"].to(dtype), t.to(x.device)
        if control is not None:  # ControlNet units: their residuals (none while every unit is inactive)
            extra.update(control.residuals(x.to(dtype), t, {**cond, "encoder_hidden_states": embeds}, extra))
        if control is not None and control.ip_adapter is not None:  # IP-Adapter units (`generate.ip_adapter`)
            return control.ip_adapter.forward(unet, x.to(dtype), t, embeds, cond["uncond_mark"], extra)
        with torch.no_grad():
            return unet(x.to(dtype), t, encoder_hidden_states=embeds, return_dict=False, **extra)[0]

    def _with_image(self, image_conditioning: torch.Tensor | None, control: ControlRun | None = None):
        """A 9-channel UNet's function: its input is [x, mask, masked-image latents] (one row for every image);
        with `control`, the UNet gets the ControlNet units' residuals (`generate.controlnet`)."""
        if not self.inpainting:
            return self._unet_fn if control is None else (lambda x, t, cond: self._unet_fn(x, t, cond, control))

        def unet_fn(x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            extra = image_conditioning
            if extra is None:
                extra = self.image_conditioning(None, None, x.shape[-1] * 8, x.shape[-2] * 8)
            extra = extra.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1)
            return self._unet_fn(torch.cat([x, extra], dim=1), t, cond, control)
        return unet_fn

    def image_conditioning(self, image, mask: np.ndarray | None, width: int, height: int) -> torch.Tensor:
        """The (1, 5, h/8, w/8) extra input of a 9-channel UNet: the conditioning mask (1 = inpaint, nearest-
        downsampled) and the latents of the pixels (in [-1, 1]; gray without an image) times (1 - mask)."""
        key = (height, width)
        if image is None and mask is None and key in self._full_mask:
            return self._full_mask[key]
        from animegen.generate.inpaint import conditioning_mask

        cmask = torch.from_numpy(conditioning_mask(None, width, height) if mask is None else mask)[None, None]
        if image is None:
            pixels = torch.zeros(1, 3, height, width)
        else:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
            pixels = pixels.permute(2, 0, 1)[None] * 2.0 - 1.0
        latents = self._encode_pixels(pixels * (1.0 - cmask))
        small = torch.nn.functional.interpolate(cmask.to(latents), size=latents.shape[-2:])
        out = torch.cat([small, latents], dim=1)
        if image is None and mask is None:
            self._full_mask[key] = out
        return out

    def denoiser(self, choice: SamplerChoice, conditioning, cfg_scale: float, width: int, height: int,
                 guidance_rescale: float = 0.0, steps: int = 1,
                 image_conditioning: torch.Tensor | None = None, control: ControlRun | None = None) -> CFGDenoiser:
        """The pass's denoiser; `steps` (the requested steps of the pass) spans a `PromptConditioning`'s schedules;
        `image_conditioning` is a 9-channel model's (default: a full mask, see the module docstring); `control`
        the pass's ControlNet units (their conditioning marks the negative rows: `controlnet.mark_uncond`)."""
        cond, uncond = self._conditions(conditioning, width, height, steps, choice)
        if control is not None:
            cond, uncond = mark_uncond(cond, False), mark_uncond(uncond, True)
        return CFGDenoiser(self._with_image(image_conditioning, control), self.schedule, cond=cond, uncond=uncond, cfg_scale=cfg_scale,
                           prediction_type=self.prediction_type, guidance_rescale=guidance_rescale,
                           lcm=choice.sampler.kind == "lcm")

    # ---- the VAE ------------------------------------------------------------------------------------------
    def _vae(self, fn: Callable):
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        dtype = vae.dtype
        if upcast:
            vae.to(torch.float32)
        try:
            with torch.no_grad():
                return fn(vae, torch.float32 if upcast else dtype)
        finally:
            if upcast:
                vae.to(dtype)

    def encode(self, images: list) -> torch.Tensor:
        """RGB images (PIL, one size) to scaled latents (posterior mean), at their own size: no resize, so a hires
        target that is not a multiple of 8 is encoded as A1111 encodes it (the VAE's strides drop the rest)."""
        array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
        return self._encode_pixels(torch.from_numpy(array).permute(0, 3, 1, 2) * 2.0 - 1.0)

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [-1, 1] to scaled latents (posterior mean)."""
        pixels = pixels.to(self.device)

        def run(vae, dtype):
            z = vae.encode(pixels.to(dtype)).latent_dist.mean.to(torch.float32)
            mean, std = _latent_stats(vae, z)
            return (z - mean) * vae.config.scaling_factor / std
        return self._vae(run)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents to float32 HxWx3 pixels in [0, 1]."""
        def run(vae, dtype):
            mean, std = _latent_stats(vae, latents)
            z = latents * std / vae.config.scaling_factor + mean
            image = vae.decode(z.to(dtype), return_dict=False)[0]
            return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        return self._vae(run)

    # ---- one pass -----------------------------------------------------------------------------------------
    def txt2img(self, choice: SamplerChoice, conditioning, seeds: list[int], *, width: int, height: int,
                steps: int, cfg_scale: float, guidance_rescale: float = 0.0, callback=None,
                noise: ImageRNG | None = None, controlnet_units: Sequence[ControlUnit] = ()) -> torch.Tensor:
        """Final latents of a txt2img pass (one image per seed; `noise` defaults to CPU generators), with the
        ControlNet units `controlnet_units` (`generate.controlnet`)."""
        shape = (len(seeds), self.pipe.unet.config.out_channels, height // 8, width // 8)
        noise = noise or ImageRNG(seeds, source="CPU", device=self.device)
        control, callback = self._control(controlnet_units, width, height, steps, callback)
        den = self.denoiser(choice, conditioning, cfg_scale, width, height, guidance_rescale, steps, control=control)
        return sample_txt2img(choice, den, noise, shape, steps, callback=callback)

    def _control(self, units: Sequence[ControlUnit], width: int, height: int, total_steps: int, callback):
        """(the pass's `ControlRun` or None, the step callback that also advances its step)."""
        if not units:
            return None, callback
        from animegen.generate.ip_adapter import IPAdapterRun, is_ip_adapter_unit

        ip_units = [u for u in units if is_ip_adapter_unit(u)]
        control = ControlRun([u for u in units if not is_ip_adapter_unit(u)], self.pipe.unet, width, height, total_steps)
        control.ip_adapter = IPAdapterRun(ip_units, self.pipe.unet, total_steps) if ip_units else None

        def on_step(info: dict) -> None:
            control.on_step(info)
            if control.ip_adapter is not None:
                control.ip_adapter.on_step(info)
            if callback is not None:
                callback(info)
        return control, on_step

    def img2img(self, choice: SamplerChoice, conditioning, seeds: list[int], init: torch.Tensor, *,
                steps: int, strength: float, cfg_scale: float, fixed_steps: bool = False,
                guidance_rescale: float = 0.0, callback=None, noise: ImageRNG | None = None,
                size: tuple[int, int] | None = None, latent_mask: torch.Tensor | None = None,
                image_conditioning: torch.Tensor | None = None,
                controlnet_units: Sequence[ControlUnit] = ()) -> torch.Tensor:
        """Final latents of an img2img pass from scaled init latents `init` (a fresh ImageRNG per pass); `size`
        (width, height) is SDXL's size conditioning, default the latents' (A1111's hires pass: its target).
        Inpainting: `latent_mask` (1 = regenerate) and a 9-channel model's `image_conditioning`. ControlNet units'
        step fractions count the pass's sampled steps (A1111's t_enc + 1)."""
        width, height = size or (init.shape[-1] * 8, init.shape[-2] * 8)
        noise = noise or ImageRNG(seeds, source="CPU", device=self.device)
        control, callback = self._control(controlnet_units, init.shape[-1] * 8, init.shape[-2] * 8,
                                          img2img_steps(steps, strength, fixed_steps)[1] + 1, callback)
        den = self.denoiser(choice, conditioning, cfg_scale, width, height, guidance_rescale, steps,
                            image_conditioning, control)
        mask = None if latent_mask is None else latent_mask.to(self.device)
        return sample_img2img(choice, den, noise, init.to(self.device), steps, strength, fixed_steps=fixed_steps,
                              callback=callback, latent_mask=mask)


def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return 0.0, 1.0
    shape = (1, -1, 1, 1)
    return (torch.tensor(mean).view(shape).to(like.device, like.dtype),
            torch.tensor(std).view(shape).to(like.device, like.dtype))
