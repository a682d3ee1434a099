"""Run one sampler x schedule x steps case through animegen and through the independent A1111 reference.

The toy network is the exact noise prediction for Gaussian data x0 ~ N(mu, 0.5^2) under its own
log-linear noise levels (so every sampler sees a smooth, known, conditioning-dependent denoiser); the
positive prompt is mu = a fixed pattern, the negative mu = 0. Used by the default-suite grid test and by
`bench/sampler_fidelity.py`, which prints the table.
"""

from __future__ import annotations

import math

import a1111_reference as ref
import torch

SHAPE = (4, 8, 8)
SEEDS = [1234, 99]
CFG = 5.0
DATA_STD = 0.5


def toy_model(x_in, t, mu, v=False):
    """eps (or v) of Gaussian data at the toy's noise level sigma(t) = 0.0292 (14.61 / 0.0292)^(t / 999)."""
    t = torch.as_tensor(t, dtype=x_in.dtype).reshape(-1, *([1] * (x_in.ndim - 1)))
    sig = 0.0292 * (14.61 / 0.0292) ** (t / 999)
    a = 1 / (1 + sig ** 2)
    eps = (1 - a).sqrt() * (x_in - a.sqrt() * mu) / (a * DATA_STD ** 2 + 1 - a)
    if not v:
        return eps
    x0 = (x_in - (1 - a).sqrt() * eps) / a.sqrt()
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def pattern(dtype):
    g = torch.Generator().manual_seed(7)
    return torch.randn((len(SEEDS), *SHAPE), generator=g).to(dtype)


def ours(sampler, schedule, steps, *, v=False, ztsnr=False, init=None, strength=None, guidance_rescale=0.0):
    from animegen.generate.denoiser import CFGDenoiser
    from animegen.generate.rng import ImageRNG
    from animegen.generate.samplers import resolve_sampler, sample_img2img, sample_txt2img
    from animegen.generate.schedules import DiscreteSchedule
    from animegen.models.tiny import SCHEDULER_CONFIG

    choice = resolve_sampler(sampler, schedule)
    sched = DiscreteSchedule.from_config({**SCHEDULER_CONFIG, "rescale_betas_zero_snr": ztsnr})
    mu = pattern(torch.float32)
    den = CFGDenoiser(lambda x, t, c: toy_model(x, t, c["mu"], v), sched, cond={"mu": mu},
                      uncond={"mu": torch.zeros_like(mu)}, cfg_scale=CFG,
                      prediction_type="v_prediction" if v else "epsilon", guidance_rescale=guidance_rescale,
                      lcm=choice.sampler.kind == "lcm")
    noise = ImageRNG(SEEDS, source="CPU")
    if init is None:
        return sample_txt2img(choice, den, noise, (len(SEEDS), *SHAPE), steps)
    return sample_img2img(choice, den, noise, init, steps, strength)


def reference(sampler, schedule, steps, *, v=False, ztsnr=False, init=None, strength=None):
    mu = pattern(torch.float64)

    def model(x_in, t, c):
        return toy_model(x_in.to(torch.float64), t, c, v)

    m = ref.Model(ztsnr=ztsnr)
    return ref.a1111_sample(sampler, schedule, steps, model, m, mu, torch.zeros_like(mu), CFG, SEEDS, SHAPE,
                            v=v, init=init, strength=strength)


def relative_difference(a, b) -> float:
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def finite(x) -> bool:
    return bool(torch.isfinite(x).all()) and not math.isnan(float(x.abs().max()))
