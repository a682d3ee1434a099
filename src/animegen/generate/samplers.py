"""A1111 1.10's sampler list, their per-sampler schedule defaults, and one call that runs a sampler.

Contract. `SAMPLERS` are A1111 1.10's names (what Civitai infotexts carry) with its aliases (`k_euler_a`,
`euler_a`) and options (`scheduler`: the schedule "Automatic" picks; `discard_next_to_last_sigma`;
`brownian_noise`; `solver_type`), kept torch-free in `sampler_names`. `resolve_sampler(name, schedule_type)` accepts a 1.10 name plus
"Schedule type", or a pre-1.9 name with the schedule as a suffix ("DPM++ 2M Karras", "DPM++ 2M SDE
Exponential"), as A1111's `get_sampler_and_scheduler` does; "Automatic" means the sampler's default, so
"DPM++ 2M" is Karras and "DPM++ 2M SDE" Exponential, as in A1111 1.10 (and unlike A1111 before 1.9).

`sample_txt2img` / `sample_img2img` run a sampler as A1111's `KDiffusionSampler` / `CompVisSampler` do:
sigmas from `sampler_sigmas` (the +1 step and dropped penultimate sigma for DPM2 / DPM2 a / 3M SDE),
`x = noise * sigmas[0]`, img2img's `setup_img2img_steps` truncation. `noise` is an `rng.ImageRNG` (one
generator per image seed): the starting noise is its `first_noise(shape)`, ancestral noise its
`next_noise()`, SDE noise a Brownian tree per image seeded with the image's seed (`noise.seeds`), whose nodes draw from the
noise's source (`noise.source`), as A1111 hands torchsde its `randn_local`. The
samplers themselves are `k_samplers` (sigma space) and `timestep_samplers` (DDIM, PLMS, UniPC). Why our own samplers and not diffusers' schedulers: see `schedules`.

Not offered (A1111 has them): DPM fast and DPM adaptive (their own step control, rarely used),
DDIM CFG++, and the options that are off by default in A1111 (s_churn, eta, sigma overrides).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from animegen.generate import k_samplers as k
from animegen.generate import timestep_samplers as ts
from animegen.generate.sampler_names import SAMPLER_NAMES, resolve_sampler_name
from animegen.generate.schedules import (
    SCHEDULE_TYPES,
    DiscreteSchedule,
    LCMSchedule,
    ScheduleType,
    find_schedule_type,
    schedule_sigmas,
)


@dataclass(frozen=True)
class Sampler:
    """An A1111 sampler: its name, the function that runs it, aliases and A1111's options for it."""

    name: str
    function: Callable = field(repr=False)
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "sigmas"  # "sigmas" (k-diffusion), "timesteps" (DDIM/PLMS/UniPC), "lcm"


# the names, aliases and options are `sampler_names`' (torch-free); here each name gets the function that runs it
_FUNCTIONS: dict[str, Callable] = {
    "DPM++ 2M": k.sample_dpmpp_2m, "DPM++ SDE": k.sample_dpmpp_sde, "DPM++ 2M SDE": k.sample_dpmpp_2m_sde,
    "DPM++ 2M SDE Heun": k.sample_dpmpp_2m_sde, "DPM++ 2S a": k.sample_dpmpp_2s_ancestral,
    "DPM++ 3M SDE": k.sample_dpmpp_3m_sde, "Euler a": k.sample_euler_ancestral, "Euler": k.sample_euler,
    "LMS": k.sample_lms, "Heun": k.sample_heun, "DPM2": k.sample_dpm_2, "DPM2 a": k.sample_dpm_2_ancestral,
    "Restart": k.sample_restart, "DDIM": ts.sample_ddim, "PLMS": ts.sample_plms, "UniPC": ts.sample_unipc,
    "LCM": k.sample_lcm,
}

SAMPLERS: dict[str, Sampler] = {
    n.name: Sampler(n.name, _FUNCTIONS[n.name], n.aliases, n.options, n.kind) for n in SAMPLER_NAMES.values()
}


@dataclass(frozen=True)
class SamplerChoice:
    """A sampler with its schedule type ("Automatic" = the sampler's default)."""

    sampler: Sampler
    schedule: ScheduleType

    @property
    def name(self) -> str:
        """One name that resolves back to this choice: the sampler's, with a non-default schedule as suffix."""
        return self.sampler.name if self.schedule.label == "Automatic" else f"{self.sampler.name} {self.schedule.label}"

    @property
    def effective_schedule(self) -> ScheduleType:
        """The schedule actually used: Automatic resolved to the sampler's default (Uniform if it has none)."""
        if self.schedule.label != "Automatic":
            return self.schedule
        return find_schedule_type(self.sampler.options.get("scheduler", "uniform"))


def resolve_sampler(name: str, schedule_type: str | None = None) -> SamplerChoice:
    """A sampler by A1111 name or alias (any case), with "Schedule type" or a schedule suffix on the name
    (`sampler_names.resolve_sampler_name`: unknown names are errors with a "did you mean")."""
    sampler, schedule = resolve_sampler_name(name, schedule_type)
    return SamplerChoice(SAMPLERS[sampler.name], SCHEDULE_TYPES[schedule.label])


def sampler_sigmas(choice: SamplerChoice, steps: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """A1111's `KDiffusionSampler.get_sigmas`: the schedule's sigmas, one step more and the penultimate
    sigma dropped for samplers that discard it."""
    discard = choice.sampler.options.get("discard_next_to_last_sigma", False)
    if choice.sampler.kind == "lcm" and not isinstance(schedule, LCMSchedule):
        schedule = LCMSchedule(schedule)
    sigmas = schedule_sigmas(choice.effective_schedule, steps + (1 if discard else 0), schedule)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def img2img_steps(steps: int, strength: float, fixed_steps: bool) -> tuple[int, int]:
    """A1111's `setup_img2img_steps`: (schedule length, t_enc). With `fixed_steps` (hires fix, or A1111's
    "img2img does exactly the steps" option) the sampler runs all `steps`; else int(strength * steps)."""
    if fixed_steps:
        return (int(steps / min(strength, 0.999)) if strength > 0 else 0), steps - 1
    return steps, int(min(strength, 0.999) * steps)


def _run(choice: SamplerChoice, denoiser, x: torch.Tensor, sigmas: torch.Tensor, full_sigmas: torch.Tensor,
         noise, callback) -> torch.Tensor:
    options = choice.sampler.options
    kwargs: dict[str, Any] = {"callback": callback}
    if options.get("brownian_noise"):
        kwargs["noise_sampler"] = k.BrownianNoise(x, full_sigmas.to(x.device), noise.seeds, noise.source)
    else:
        kwargs["noise_sampler"] = lambda sigma, sigma_next: noise.next_noise().to(x)
    if options.get("solver_type"):
        kwargs["solver_type"] = options["solver_type"]
    return choice.sampler.function(denoiser, x, sigmas.to(x.device), **kwargs)


def sample_txt2img(choice: SamplerChoice, denoiser, noise, shape: tuple[int, ...], steps: int,
                   callback=None) -> torch.Tensor:
    """Latents (batch `shape`) from pure noise: A1111's `sample` for the chosen sampler and schedule."""
    first = noise.first_noise(shape)
    if choice.sampler.kind == "timesteps":
        return choice.sampler.function(denoiser, first, ts.a1111_timesteps(steps), callback=callback,
                                       noise_sampler=lambda s, sn: noise.next_noise().to(first))
    sigmas = sampler_sigmas(choice, steps, denoiser.schedule)
    return _run(choice, denoiser, first * sigmas[0].to(first.device), sigmas, sigmas, noise, callback)


class MaskedDenoiser:
    """A1111 1.10's inpainting blend inside `CFGDenoiser.forward`, over any denoiser: with `mask` m (1 = regenerate,
    broadcast over the latents) every denoised prediction becomes D * m + x0 * (1 - m) (sigma samplers); the
    timestep samplers (DDIM, PLMS, UniPC; A1111's `mask_before_denoising`) see x * m + x0 * (1 - m) instead."""

    def __init__(self, denoiser, x0: torch.Tensor, mask: torch.Tensor):
        self.inner, self.x0, self.mask = denoiser, x0, mask.to(x0)

    def blend(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask + self.x0 * (1 - self.mask)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.blend(self.inner(x, sigma))

    def eps(self, x: torch.Tensor, timestep: float) -> torch.Tensor:
        return self.inner.eps(self.blend(x), timestep)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def sample_img2img(choice: SamplerChoice, denoiser, noise, x0: torch.Tensor, steps: int,
                   strength: float, *, fixed_steps: bool = False, callback=None,
                   latent_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Latents from `x0` noised to `strength`: A1111's `sample_img2img` (t_enc + 1 steps of the schedule).

    `latent_mask` (1 = regenerate, 0 = keep `x0`): inpainting's blend at every denoiser call (`MaskedDenoiser`)
    and of the final latents, result * m + x0 * (1 - m), as A1111's img2img `sample` does."""
    if latent_mask is not None:
        mask = latent_mask.to(x0)
        out = sample_img2img(choice, MaskedDenoiser(denoiser, x0, mask), noise, x0, steps, strength,
                             fixed_steps=fixed_steps, callback=callback)
        return out * mask + x0 * (1 - mask)
    total, t_enc = img2img_steps(steps, strength, fixed_steps)
    first = noise.first_noise(tuple(x0.shape)).to(x0)
    if choice.sampler.kind == "timesteps":
        timesteps = ts.a1111_timesteps(total)
        xi = ts.noised_latents(denoiser.schedule.alphas_cumprod.to(x0.device), x0, first, timesteps[t_enc])
        extra = {"is_img2img": True} if "is_img2img" in inspect.signature(choice.sampler.function).parameters else {}
        return choice.sampler.function(denoiser, xi, timesteps[:t_enc], callback=callback,
                                       noise_sampler=lambda s, sn: noise.next_noise().to(first), **extra)
    sigmas = sampler_sigmas(choice, total, denoiser.schedule)
    sched = sigmas[total - t_enc - 1:]
    return _run(choice, denoiser, x0 + first * sched[0].to(x0.device), sched, sigmas, noise, callback)
