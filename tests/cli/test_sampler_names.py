"""generate/sampler_names.py: the one torch-free home of sampler and schedule names, with "did you mean"."""

from __future__ import annotations

import subprocess
import sys

import pytest

from animegen.core.errors import AnimegenError
from animegen.generate.sampler_names import (
    SAMPLER_NAMES,
    SCHEDULE_NAMES,
    did_you_mean,
    resolve_sampler_name,
    resolve_schedule_name,
)


def test_samplers_and_schedules_are_built_from_the_name_tables():
    from animegen.generate.samplers import SAMPLERS, resolve_sampler
    from animegen.generate.schedules import SCHEDULE_TYPES

    assert list(SAMPLERS) == list(SAMPLER_NAMES)
    for name, names in SAMPLER_NAMES.items():
        assert (SAMPLERS[name].aliases, SAMPLERS[name].options, SAMPLERS[name].kind) == \
            (names.aliases, names.options, names.kind)
    assert [(s.name, s.label, s.aliases) for s in SCHEDULE_TYPES.values()] == \
        [(s.name, s.label, s.aliases) for s in SCHEDULE_NAMES.values()]
    choice = resolve_sampler("dpm++ 2m karras")
    assert (choice.sampler.name, choice.schedule.label) == ("DPM++ 2M", "Automatic")  # Karras is its default


@pytest.mark.parametrize(("given", "sampler", "schedule"), [
    ("k_euler_a", "Euler a", "Automatic"), ("euler_a", "Euler a", "Automatic"),
    ("DPM++ 2M karras", "DPM++ 2M", "Automatic"), ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
    ("Euler Exponential", "Euler", "Exponential"), ("dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun", "Automatic"),
])
def test_a1111_aliases_resolve_to_canonical_names(given, sampler, schedule):
    found, kind = resolve_sampler_name(given)
    assert (found.name, kind.label) == (sampler, schedule)


def test_near_misses_say_did_you_mean():
    with pytest.raises(AnimegenError, match=r"unknown sampler 'Eulr a' \(did you mean 'Euler a'\?\); valid samplers"):
        resolve_sampler_name("Eulr a")
    with pytest.raises(AnimegenError, match=r"did you mean 'DPM\+\+ 2M Karras'"):
        resolve_sampler_name("DPM++ 2M Karas")
    with pytest.raises(AnimegenError, match=r"unknown schedule type 'Karas' \(did you mean 'Karras'\?\)"):
        resolve_schedule_name("Karas")
    with pytest.raises(AnimegenError, match=r"unknown sampler 'Foo'; valid samplers: DPM\+\+ 2M,"):
        resolve_sampler_name("Foo")  # nothing close: no guess
    assert did_you_mean("ANIMAGIN", ["animagine", "dashanime"]) == " (did you mean 'animagine'?)"


def test_names_module_does_not_import_torch():
    code = "import sys, animegen.generate.sampler_names; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
