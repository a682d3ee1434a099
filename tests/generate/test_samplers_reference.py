"""Every sampler x schedule type x steps against the independent A1111 1.10 reference (`a1111_reference`).

The grid runs on the toy Gaussian-data network (`sampler_harness`), with CPU noise from per-image
generators and, for the SDE samplers, Brownian trees seeded per image; a few cases run on the tiny UNet.
The target is issue #13's: max |ours - A1111| / max |A1111| of the final latents below 1e-3.
"""

import a1111_reference as ref
import numpy as np
import pytest
import torch
from sampler_harness import SEEDS, SHAPE, ours, pattern, reference, relative_difference

TARGET = 1e-3
# The deterministic and generator-noise samplers land within float32 rounding of the float64 reference;
# holding them to 1e-4 also catches slips too small for the 1e-3 target (integer-rounded timesteps: 4e-4).
TIGHT = 1e-4
SIGMA_SAMPLERS = [s for s, (default, _, _) in ref.A1111_SAMPLERS.items() if default is not None]
TIMESTEP_SAMPLERS = [s for s, (default, _, _) in ref.A1111_SAMPLERS.items() if default is None]


def _lcm_tie(sampler: str, label: str, steps: int) -> bool:
    """LCM snaps each sigma to the nearest of its 50 discrete levels (in log sigma). SGM Uniform puts one sigma
    exactly halfway between two levels, so which one A1111 (and we) snap to is decided by float rounding, which
    differs between CPUs' vector units: such a case has no defined answer and is left out."""
    if sampler != "LCM":
        return False
    m = ref.Model(lcm=True)
    for sigma in ref.sampler_sigmas(sampler, label, steps, m)[:-1]:
        near = np.sort(np.abs(np.log(sigma) - m.logsig))
        if near[1] - near[0] < 1e-9:
            return True
    return False


@pytest.mark.parametrize("steps", [4, 10, 20])
@pytest.mark.parametrize("sampler", SIGMA_SAMPLERS)
def test_every_schedule_and_step_count_matches_a1111(sampler, steps):
    labels = [label for label in ref.SCHEDULES if not _lcm_tie(sampler, label, steps)]
    worst = max((relative_difference(ours(sampler, label, steps), reference(sampler, label, steps)), label)
                for label in labels)
    assert worst[0] < (TARGET if ref.A1111_SAMPLERS[sampler][2] == "brownian" else TIGHT), worst


@pytest.mark.parametrize("sampler", TIMESTEP_SAMPLERS)
def test_timestep_samplers_match_a1111_and_ignore_the_schedule_type(sampler):
    for steps in (4, 10, 20):
        got = ours(sampler, "Automatic", steps)
        assert relative_difference(got, reference(sampler, "Automatic", steps)) < TIGHT
        assert torch.equal(ours(sampler, "Karras", steps), got)


@pytest.mark.parametrize("sampler", list(ref.A1111_SAMPLERS))
def test_v_prediction_zero_terminal_snr_and_img2img_match_a1111(sampler):
    init = pattern(torch.float32) * 0.8
    for kw in (dict(v=True), dict(ztsnr=True), dict(v=True, ztsnr=True), dict(init=init, strength=0.6)):
        got = ours(sampler, "Automatic", 10, **kw)
        assert torch.isfinite(got).all(), kw
        assert relative_difference(got, reference(sampler, "Automatic", 10, **kw)) < TARGET, kw


@pytest.mark.parametrize("sampler", ["DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE", "Euler a"])
def test_stochastic_samplers_are_reproducible_and_batch_independent(sampler):
    """Same seed, same latents (issue #13: DPM++ SDE differed on every request); image k of a batch equals
    image k alone, since every image has its own generator / Brownian tree."""
    from sampler_harness import toy_model

    from animegen.generate.denoiser import CFGDenoiser
    from animegen.generate.rng import ImageRNG
    from animegen.generate.samplers import resolve_sampler, sample_txt2img
    from animegen.generate.schedules import DiscreteSchedule
    from animegen.models.tiny import SCHEDULER_CONFIG

    def run(seeds):
        mu = pattern(torch.float32)[: len(seeds)]
        den = CFGDenoiser(lambda x, t, c: toy_model(x, t, c["mu"]), DiscreteSchedule.from_config(SCHEDULER_CONFIG),
                          cond={"mu": mu}, uncond={"mu": torch.zeros_like(mu)}, cfg_scale=5.0)
        torch.manual_seed(len(seeds) * 7919)  # the global RNG must not matter
        return sample_txt2img(resolve_sampler(sampler), den, ImageRNG(seeds, source="CPU"),
                              (len(seeds), *SHAPE), 8)

    both = run(SEEDS)
    assert torch.equal(run(SEEDS), both)
    assert torch.allclose(run(SEEDS[:1])[0], both[0], atol=1e-6)
    assert not torch.allclose(both[0], both[1])


def test_guidance_rescale_is_cfg_rescale_on_the_model_output():
    """phi = 0 is A1111's CFG; phi > 0 rescales the guided eps to the positive's std (Lin et al. 2023, 3.4)."""
    from sampler_harness import toy_model

    from animegen.generate.denoiser import CFGDenoiser
    from animegen.generate.schedules import DiscreteSchedule
    from animegen.models.tiny import SCHEDULER_CONFIG

    sched = DiscreteSchedule.from_config(SCHEDULER_CONFIG)
    mu = pattern(torch.float32)
    x = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3)) * 3
    sigma = torch.tensor([2.5, 2.5])
    t = sched.sigma_to_t(sigma)
    x_in = x / (2.5 ** 2 + 1) ** 0.5
    e_c, e_u = toy_model(x_in, t, mu), toy_model(x_in, t, torch.zeros_like(mu))
    e_cfg = e_u + 7 * (e_c - e_u)
    ratio = e_c.std(dim=(1, 2, 3), keepdim=True) / e_cfg.std(dim=(1, 2, 3), keepdim=True)
    for phi in (0.0, 0.7):
        den = CFGDenoiser(lambda x, t, c: toy_model(x, t, c["mu"]), sched, cond={"mu": mu},
                          uncond={"mu": torch.zeros_like(mu)}, cfg_scale=7.0, guidance_rescale=phi)
        expected = x - 2.5 * (phi * e_cfg * ratio + (1 - phi) * e_cfg)
        assert torch.allclose(den(x, sigma), expected, atol=1e-4), phi


@pytest.fixture(scope="module")
def tiny_pipe(tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, requires_safety_checker=False)


@pytest.mark.parametrize("sampler,schedule,steps", [
    ("DPM++ 2M", "Automatic", 10), ("DPM++ SDE", "Automatic", 4), ("DPM++ 2M SDE Heun", "Beta", 4),
    ("Euler a", "Align Your Steps", 4), ("UniPC", "Automatic", 4), ("PLMS", "Automatic", 4),
    ("LCM", "Automatic", 4), ("DPM2 a", "KL Optimal", 4), ("Restart", "Automatic", 20),
])
def test_tiny_unet_latents_match_a1111(tiny_pipe, sampler, schedule, steps, one_torch_thread):
    from pipeline_reference import a1111_images

    from animegen.generate.kpipeline import KPipeline
    from animegen.generate.samplers import resolve_sampler
    from animegen.prompts.encode import encode_prompts

    _, want = a1111_images(tiny_pipe, sampler, "1girl, red hair", "lowres", steps, 6.0, 77, width=64, height=64,
                           schedule=schedule)
    conditioning = encode_prompts(tiny_pipe, "1girl, red hair", "lowres")
    got = KPipeline(tiny_pipe, is_sdxl=False).txt2img(resolve_sampler(sampler, schedule), conditioning, [77],
                                                      width=64, height=64, steps=steps, cfg_scale=6.0)
    assert relative_difference(got, want) < TARGET
    assert np.isfinite(got.numpy()).all()


@pytest.fixture(scope="module")
def vpred_ztsnr_pipe():
    """A tiny SD1.5 whose scheduler config says v-prediction and zero-terminal SNR (NoobAI-XL-v-pred style)."""
    from diffusers import EulerDiscreteScheduler

    from animegen.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd15")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction",
                                                        rescale_betas_zero_snr=True)
    return pipe


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM2", "LMS", "PLMS", "UniPC"])
def test_engine_v_prediction_zero_terminal_snr_matches_a1111(vpred_ztsnr_pipe, sampler, one_torch_thread):
    """Issue #13: ZTSNR was dropped by DPM2 / LMS / PLMS / SDE samplers; now every one runs A1111's pinned schedule."""
    from pipeline_reference import a1111_images

    from animegen.generate import GenerationRequest, Generator

    gen = Generator(pipe=vpred_ztsnr_pipe, model_name="vz")
    assert gen.sampling().schedule.sigma_max.item() > 4000
    ours = gen(GenerationRequest("1girl", negative_prompt="bad", sampler=sampler, steps=6, seed=5, cfg_scale=5.0,
                                 width=64, height=64, rng="CPU"))[0].array  # the reference draws CPU noise
    want, _ = a1111_images(vpred_ztsnr_pipe, sampler, "1girl", "bad", 6, 5.0, 5, width=64, height=64)
    # pixels lie in [0, 1]: 1e-3 absolute is the relative target (SDE trees over [0.03, 4519] in float32)
    assert np.isfinite(ours).all() and np.abs(ours - want).max() <= TARGET


def test_engine_dpmpp_sde_same_seed_same_image(tiny_pipe, one_torch_thread):
    from animegen.generate import GenerationRequest, Generator

    gen = Generator(pipe=tiny_pipe, model_name="tiny")
    req = GenerationRequest("1girl", sampler="DPM++ SDE Karras", steps=4, seed=11, n=2, batch_size=2,
                            width=64, height=64)
    first, again = gen(req), gen(req)
    assert all(np.array_equal(a.array, b.array) for a, b in zip(first, again))
    alone = gen(GenerationRequest(**{**req.__dict__, "seed": 12, "n": 1, "batch_size": 1}))[0]
    assert np.abs(alone.array - first[1].array).max() <= 1e-4  # batched UNet rounding only
