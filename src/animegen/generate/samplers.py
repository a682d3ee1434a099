"""A1111 sampler names mapped to diffusers schedulers.

A1111 (and Civitai metadata) name samplers after k-diffusion ("DPM++ 2M Karras"); diffusers names
schedulers after papers. This table is the translation diffusers documents, kept in one place so
generation, the REST API and PNG infotext all speak A1111's names. Since A1111 1.9 the noise
schedule is a separate field ("Schedule type: Karras"); `resolve_sampler` accepts both spellings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)


@dataclass(frozen=True)
class Sampler:
    """An A1111 sampler name and the diffusers scheduler (plus options) that implements it."""

    name: str
    scheduler_class: type
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


_SDE = {"algorithm_type": "sde-dpmsolver++"}
_KARRAS = {"use_karras_sigmas": True}

SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("Euler a", EulerAncestralDiscreteScheduler, aliases=("euler_a", "euler_ancestral")),
        Sampler("Euler", EulerDiscreteScheduler, aliases=("euler",)),
        Sampler("DPM++ 2M", DPMSolverMultistepScheduler, aliases=("dpmpp_2m",)),
        Sampler("DPM++ 2M Karras", DPMSolverMultistepScheduler, _KARRAS, aliases=("dpmpp_2m_karras",)),
        Sampler("DPM++ 2M SDE", DPMSolverMultistepScheduler, _SDE, aliases=("dpmpp_2m_sde",)),
        Sampler("DPM++ 2M SDE Karras", DPMSolverMultistepScheduler, {**_SDE, **_KARRAS},
                aliases=("dpmpp_2m_sde_karras",)),
        Sampler("DPM++ SDE", DPMSolverSDEScheduler, aliases=("dpmpp_sde",)),
        Sampler("DPM++ SDE Karras", DPMSolverSDEScheduler, _KARRAS, aliases=("dpmpp_sde_karras",)),
        Sampler("DPM2", KDPM2DiscreteScheduler, aliases=("dpm2",)),
        Sampler("DPM2 Karras", KDPM2DiscreteScheduler, _KARRAS, aliases=("dpm2_karras",)),
        Sampler("DPM2 a", KDPM2AncestralDiscreteScheduler, aliases=("dpm2_a",)),
        Sampler("DPM2 a Karras", KDPM2AncestralDiscreteScheduler, _KARRAS, aliases=("dpm2_a_karras",)),
        Sampler("Heun", HeunDiscreteScheduler, aliases=("heun",)),
        Sampler("LMS", LMSDiscreteScheduler, aliases=("lms",)),
        Sampler("LMS Karras", LMSDiscreteScheduler, _KARRAS, aliases=("lms_karras",)),
        Sampler("DDIM", DDIMScheduler, aliases=("ddim",)),
        Sampler("PLMS", PNDMScheduler, {"skip_prk_steps": True}, aliases=("plms", "pndm")),
        Sampler("UniPC", UniPCMultistepScheduler, aliases=("unipc",)),
    )
}


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


_LOOKUP = {_key(alias): s for s in SAMPLERS.values() for alias in (s.name, *s.aliases)}


def resolve_sampler(name: str, schedule_type: str | None = None) -> Sampler:
    """Find a sampler by its A1111 name (case-insensitive) or k-diffusion alias.

    `schedule_type` is A1111 1.9's separate "Schedule type" field: "Karras" turns "DPM++ 2M" into
    "DPM++ 2M Karras"; "Automatic" (or None) keeps the sampler's own schedule.
    """
    key = _key(name)
    if schedule_type and _key(schedule_type) not in ("automatic", "") and not key.endswith(_key(schedule_type)):
        key = f"{key} {_key(schedule_type)}"
    if key not in _LOOKUP:
        valid = ", ".join(SAMPLERS)
        extra = f" with schedule type {schedule_type!r}" if schedule_type else ""
        raise ValueError(f"unknown sampler {name!r}{extra}; valid samplers: {valid}")
    return _LOOKUP[key]


def make_scheduler(name: str, base_scheduler_config: dict, schedule_type: str | None = None):
    """Build the diffusers scheduler for an A1111 sampler name from a model's scheduler config.

    The model's own config supplies the noise schedule (betas, prediction type, timestep spacing);
    the sampler only chooses the solver, so a v-prediction model stays v-prediction.
    """
    sampler = resolve_sampler(name, schedule_type)
    config = {k: v for k, v in dict(base_scheduler_config).items() if not k.startswith("_")}
    config.pop("use_karras_sigmas", None)
    config.pop("algorithm_type", None)
    return sampler.scheduler_class.from_config(config, **sampler.options)
