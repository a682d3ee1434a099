"""A1111 sampler names → diffusers schedulers."""

import pytest
from diffusers import (DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
                       UniPCMultistepScheduler)

from animegen.generate.samplers import SAMPLERS, make_scheduler, resolve_sampler
from animegen.models.tiny import SCHEDULER_CONFIG

REQUIRED = ["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE Karras", "DPM++ SDE Karras",
            "DDIM", "UniPC", "Heun", "LMS"]


def test_required_names_present_and_build():
    for name in REQUIRED:
        assert name in SAMPLERS
        scheduler = make_scheduler(name, SCHEDULER_CONFIG)
        scheduler.set_timesteps(6)
        assert len(scheduler.timesteps) >= 6


def test_mapping_details():
    assert isinstance(make_scheduler("Euler a", SCHEDULER_CONFIG), EulerAncestralDiscreteScheduler)
    assert isinstance(make_scheduler("Heun", SCHEDULER_CONFIG), HeunDiscreteScheduler)
    assert isinstance(make_scheduler("UniPC", SCHEDULER_CONFIG), UniPCMultistepScheduler)
    karras = make_scheduler("DPM++ 2M SDE Karras", SCHEDULER_CONFIG)
    assert isinstance(karras, DPMSolverMultistepScheduler)
    assert karras.config.use_karras_sigmas and karras.config.algorithm_type == "sde-dpmsolver++"
    plain = make_scheduler("DPM++ 2M", {**SCHEDULER_CONFIG, "use_karras_sigmas": True})
    assert not plain.config.use_karras_sigmas  # the sampler name decides, not a stale model config


def test_model_noise_schedule_is_kept():
    s = make_scheduler("DDIM", {**SCHEDULER_CONFIG, "prediction_type": "v_prediction"})
    assert s.config.prediction_type == "v_prediction" and s.config.beta_end == SCHEDULER_CONFIG["beta_end"]


def test_a1111_19_schedule_type_and_aliases():
    assert resolve_sampler("DPM++ 2M", "Karras").name == "DPM++ 2M Karras"
    assert resolve_sampler("DPM++ 2M Karras", "Karras").name == "DPM++ 2M Karras"
    assert resolve_sampler("Euler a", "Automatic").name == "Euler a"
    assert resolve_sampler("euler_a").name == "Euler a"
    assert resolve_sampler("dpm++ 2m karras").name == "DPM++ 2M Karras"


def test_unknown_sampler_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown sampler 'Euler b'.*DPM\\+\\+ 2M Karras"):
        resolve_sampler("Euler b")
