"""A1111 1.10 sampler names, schedule types and their per-sampler defaults."""

import math

import pytest
import torch

from animegen.core.errors import AnimegenError
from animegen.generate.samplers import SAMPLERS, img2img_steps, resolve_sampler, sampler_sigmas
from animegen.generate.schedules import SCHEDULE_TYPES, DiscreteSchedule, karras, schedule_sigmas
from animegen.models.tiny import SCHEDULER_CONFIG

# A1111 1.10's sampler dropdown (k-diffusion, timestep and LCM samplers; DPM fast/adaptive left out)
A1111_110 = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
             "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "Restart", "DDIM", "PLMS", "UniPC", "LCM"]
A1111_SCHEDULES = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                   "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]


@pytest.fixture(scope="module")
def schedule():
    return DiscreteSchedule.from_config(SCHEDULER_CONFIG)


def test_every_a1111_110_sampler_and_schedule_type_is_listed():
    assert list(SAMPLERS) == A1111_110
    assert list(SCHEDULE_TYPES) == A1111_SCHEDULES


@pytest.mark.parametrize("sampler,default", [
    ("DPM++ 2M", "Karras"), ("DPM++ SDE", "Karras"), ("DPM2", "Karras"), ("DPM2 a", "Karras"),
    ("DPM++ 2S a", "Karras"), ("Restart", "Karras"), ("DPM++ 2M SDE", "Exponential"),
    ("DPM++ 2M SDE Heun", "Exponential"), ("DPM++ 3M SDE", "Exponential"), ("Euler a", "Uniform"),
    ("Euler", "Uniform"), ("LMS", "Uniform"), ("Heun", "Uniform"),
])
def test_automatic_is_the_samplers_a1111_110_default(sampler, default):
    assert resolve_sampler(sampler).effective_schedule.label == default
    assert resolve_sampler(sampler, "Automatic").effective_schedule.label == default


def test_pre_19_names_aliases_and_schedule_type_field():
    assert resolve_sampler("DPM++ 2M Karras").name == "DPM++ 2M"  # Karras is its Automatic (A1111 convert_automatic)
    assert resolve_sampler("DPM++ 2M", "Karras").name == "DPM++ 2M"
    choice = resolve_sampler("DPM++ 2M SDE Karras")
    assert (choice.sampler.name, choice.schedule.label) == ("DPM++ 2M SDE", "Karras")
    assert resolve_sampler(choice.name).effective_schedule.label == "Karras"  # the combined name round-trips
    assert resolve_sampler("Euler a", "Karras").name == "Euler a Karras"
    assert resolve_sampler("DPM++ 2M", "sgm_uniform").effective_schedule.label == "SGM Uniform"
    for alias, name in [("k_euler_a", "Euler a"), ("euler_a", "Euler a"), ("k_dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun"),
                        ("dpm++ 2m karras", "DPM++ 2M"), ("k_lcm", "LCM"), ("pndm", "PLMS")]:
        assert resolve_sampler(alias).sampler.name == name


def test_unknown_sampler_or_schedule_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown sampler 'Euler b'.*DPM\\+\\+ 2M SDE Heun.*KL Optimal"):
        resolve_sampler("Euler b")
    with pytest.raises(AnimegenError, match="unknown schedule type 'Karas'.*Align Your Steps"):
        resolve_sampler("Euler", "Karas")


def test_discard_penultimate_sigma(schedule):
    """DPM2, DPM2 a and DPM++ 3M SDE: a schedule of steps + 1 with the next-to-last sigma dropped."""
    s = sampler_sigmas(resolve_sampler("DPM2"), 10, schedule)
    full = karras(11, schedule.sigma_min.item(), schedule.sigma_max.item(), schedule)
    assert len(s) == 11 and torch.equal(s, torch.cat([full[:-2], full[-1:]]))
    assert len(sampler_sigmas(resolve_sampler("DPM2", "Exponential"), 10, schedule)) == 11
    assert len(sampler_sigmas(resolve_sampler("Euler"), 10, schedule)) == 11


def test_schedules_span_the_models_sigmas(schedule):
    top, bottom = schedule.sigma_max.item(), schedule.sigma_min.item()
    assert top == pytest.approx(14.6146, abs=1e-4) and bottom == pytest.approx(0.029168, abs=1e-6)
    uniform = schedule_sigmas("Uniform", 10, schedule)
    assert uniform[0].item() == pytest.approx(top) and uniform[-2].item() == pytest.approx(bottom)
    for label in A1111_SCHEDULES[1:]:
        s = schedule_sigmas(label, 10, schedule)
        assert (s[:-1] > s[1:]).all() and s.dtype == torch.float32, label
    assert schedule_sigmas("KL Optimal", 10, schedule)[-1].item() == pytest.approx(bottom)  # ends at sigma_min
    assert len(schedule_sigmas("Align Your Steps", 11, schedule)) == 12


def test_zero_terminal_snr_is_a1111s_pinned_last_alpha():
    z = DiscreteSchedule.from_config({**SCHEDULER_CONFIG, "rescale_betas_zero_snr": True})
    a = 4.8973451890853435e-08
    assert z.sigma_max.item() == pytest.approx(math.sqrt((1 - a) / a), rel=1e-5)  # ~4518.8, not inf
    assert z.sigma_min.item() == pytest.approx(DiscreteSchedule.from_config(SCHEDULER_CONFIG).sigma_min.item(),
                                               rel=1e-3)


def test_img2img_steps_is_a1111s_setup_img2img_steps():
    assert img2img_steps(20, 0.5, False) == (20, 10)
    assert img2img_steps(20, 1.0, False) == (20, 19)
    assert img2img_steps(4, 0.5, True) == (8, 3)  # hires: exactly 4 steps run
    assert img2img_steps(4, 0.01, False) == (4, 0)  # one step, no crash
