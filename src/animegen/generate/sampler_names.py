"""A1111 1.10's sampler and "Schedule type" names, aliases and options: the name tables, without torch.

Contract. This is the one home of the names: `samplers.SAMPLERS` and `schedules.SCHEDULE_TYPES` join these
tables to the functions that run them, and everything that only needs to check or list a name (the CLI's
checks before a model loads, `animegen samplers`, preset files) reads it here without importing torch.

`resolve_sampler_name(name, schedule_type)` accepts a 1.10 name or alias in any case (`k_euler_a`,
`euler_a`, `dpm++ 2m`) plus "Schedule type", or a pre-1.9 name with the schedule as suffix ("DPM++ 2M
Karras", "DPM++ 2M SDE Exponential"; the suffix wins, as A1111's `get_sampler_and_scheduler` does). A
schedule equal to the sampler's own default becomes "Automatic" (A1111's `convert_automatic`). Unknown
names are errors that list the valid names and, for a near miss, say "did you mean" (difflib).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from animegen.core.errors import AnimegenError


@dataclass(frozen=True)
class SamplerName:
    """An A1111 sampler's name, aliases and A1111's options for it (`scheduler`: what "Automatic" picks)."""

    name: str
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "sigmas"  # "sigmas" (k-diffusion), "timesteps" (DDIM/PLMS/UniPC), "lcm"


@dataclass(frozen=True)
class ScheduleName:
    """One of A1111 1.10's "Schedule type" entries: internal name, UI label, aliases."""

    name: str
    label: str
    aliases: tuple[str, ...] = ()


_KARRAS = {"scheduler": "karras"}
_EXP = {"scheduler": "exponential"}
_DISCARD = {"discard_next_to_last_sigma": True}
_BROWNIAN = {"brownian_noise": True}

SAMPLER_NAMES: dict[str, SamplerName] = {
    s.name: s
    for s in (
        SamplerName("DPM++ 2M", ("k_dpmpp_2m", "dpmpp_2m"), dict(_KARRAS)),
        SamplerName("DPM++ SDE", ("k_dpmpp_sde", "dpmpp_sde"), {**_KARRAS, "second_order": True, **_BROWNIAN}),
        SamplerName("DPM++ 2M SDE", ("k_dpmpp_2m_sde", "dpmpp_2m_sde"), {**_EXP, **_BROWNIAN}),
        SamplerName("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"),
                    {**_EXP, **_BROWNIAN, "solver_type": "heun"}),
        SamplerName("DPM++ 2S a", ("k_dpmpp_2s_a", "dpmpp_2s_a"), {**_KARRAS, "uses_ensd": True, "second_order": True}),
        SamplerName("DPM++ 3M SDE", ("k_dpmpp_3m_sde", "dpmpp_3m_sde"), {**_EXP, **_DISCARD, **_BROWNIAN}),
        SamplerName("Euler a", ("k_euler_a", "k_euler_ancestral", "euler_a", "euler_ancestral"), {"uses_ensd": True}),
        SamplerName("Euler", ("k_euler", "euler")),
        SamplerName("LMS", ("k_lms", "lms")),
        SamplerName("Heun", ("k_heun", "heun"), {"second_order": True}),
        SamplerName("DPM2", ("k_dpm_2", "dpm2"), {**_KARRAS, **_DISCARD, "second_order": True}),
        SamplerName("DPM2 a", ("k_dpm_2_a", "dpm2_a"), {**_KARRAS, **_DISCARD, "uses_ensd": True, "second_order": True}),
        SamplerName("Restart", ("restart",), {**_KARRAS, "second_order": True}),
        SamplerName("DDIM", ("ddim",), kind="timesteps"),
        SamplerName("PLMS", ("plms", "pndm"), kind="timesteps"),
        SamplerName("UniPC", ("unipc",), kind="timesteps"),
        SamplerName("LCM", ("k_lcm", "lcm"), kind="lcm"),
    )
}

SCHEDULE_NAMES: dict[str, ScheduleName] = {
    s.label: s
    for s in (
        ScheduleName("automatic", "Automatic"),
        ScheduleName("uniform", "Uniform"),
        ScheduleName("karras", "Karras"),
        ScheduleName("exponential", "Exponential"),
        ScheduleName("polyexponential", "Polyexponential"),
        ScheduleName("sgm_uniform", "SGM Uniform", ("SGMUniform",)),
        ScheduleName("kl_optimal", "KL Optimal"),
        ScheduleName("align_your_steps", "Align Your Steps"),
        ScheduleName("simple", "Simple"),
        ScheduleName("normal", "Normal"),
        ScheduleName("ddim", "DDIM"),
        ScheduleName("beta", "Beta"),
    )
}


def _sampler_key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def _schedule_key(text: str) -> str:
    return "".join(text.lower().replace("_", " ").split())


_SAMPLER_LOOKUP = {_sampler_key(alias): s for s in SAMPLER_NAMES.values() for alias in (s.name, *s.aliases)}
_SCHEDULE_LOOKUP = {_schedule_key(alias): s for s in SCHEDULE_NAMES.values()
                    for alias in (s.name, s.label, *s.aliases)}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'X'?)` for the closest of `choices` to `word` (case-insensitive, difflib), else ``."""
    by_key: dict[str, str] = {}
    for choice in choices:
        by_key.setdefault(choice.lower(), choice)
    close = difflib.get_close_matches(str(word).lower(), list(by_key), n=1, cutoff=0.6)
    return f" (did you mean {by_key[close[0]]!r}?)" if close else ""


def find_schedule_name(name: str | None) -> ScheduleName | None:
    """The schedule type called `name` (label, internal name or alias; any case); None when unknown.
    No name ("" or None) is Automatic."""
    return SCHEDULE_NAMES["Automatic"] if name in (None, "") else _SCHEDULE_LOOKUP.get(_schedule_key(name))


def resolve_schedule_name(name: str | None) -> ScheduleName:
    """Like `find_schedule_name`, but an unknown name is an error listing the valid ones."""
    found = find_schedule_name(name)
    if found is None:
        hint = did_you_mean(name, [s.label for s in SCHEDULE_NAMES.values()])
        raise AnimegenError(f"unknown schedule type {name!r}{hint}; valid schedule types: {', '.join(SCHEDULE_NAMES)}")
    return found


def _suffixed_names() -> list[str]:
    """Every accepted spelling a near miss could be aiming at: names, aliases, and pre-1.9 "NAME Schedule"."""
    names = [alias for s in SAMPLER_NAMES.values() for alias in (s.name, *s.aliases)]
    names += [f"{s.name} {kind.label}" for s in SAMPLER_NAMES.values() if s.kind == "sigmas"
              for kind in SCHEDULE_NAMES.values() if kind.label != "Automatic"]
    return names


def resolve_sampler_name(name: str, schedule_type: str | None = None) -> tuple[SamplerName, ScheduleName]:
    """(sampler, schedule type) for an A1111 name or alias plus "Schedule type"; see the module docstring."""
    key, schedule = _sampler_key(name), resolve_schedule_name(schedule_type)
    if key not in _SAMPLER_LOOKUP:
        for kind in SCHEDULE_NAMES.values():  # pre-1.9 names: "DPM++ 2M Karras"; the suffix wins, as in A1111
            for option in (kind.label, kind.name, *kind.aliases):
                suffix = _sampler_key(option)
                if key.endswith(" " + suffix) and key[: -len(suffix) - 1] in _SAMPLER_LOOKUP:
                    key, schedule = key[: -len(suffix) - 1], kind
    if key not in _SAMPLER_LOOKUP:
        extra = f" with schedule type {schedule_type!r}" if schedule_type else ""
        raise AnimegenError(f"unknown sampler {name!r}{extra}{did_you_mean(name, _suffixed_names())}; valid "
                            f"samplers: {', '.join(SAMPLER_NAMES)} (schedule types: {', '.join(SCHEDULE_NAMES)})")
    sampler = _SAMPLER_LOOKUP[key]
    if schedule.name == sampler.options.get("scheduler"):
        schedule = SCHEDULE_NAMES["Automatic"]  # A1111's convert_automatic
    return sampler, schedule
