"""kohya's noise and loss options: multi-resolution (pyramid) noise, input-perturbation noise, debiased
estimation and a timestep sampling range.

References (kohya sd-scripts `library/custom_train_functions.py` and `train_util.py`, the papers they cite):
- pyramid noise (`multires_noise_iterations`, `multires_noise_discount`): n + sum_i discount^i *
  bilinear_up(randn at size / r^i), r ~ U[2, 4) per level, stopping after a 1-px level, then / std;
- input perturbation (`ip_noise_gamma`, Ning et al. 2023): the UNet input is noised with noise + gamma * randn,
  the target stays the plain noise;
- debiased estimation (`debiased_estimation_loss`): per-sample weight 1 / sqrt(SNR) (epsilon) or
  1 / (SNR + 1) (v-prediction), SNR clamped at 1000;
- `min_timestep`, `max_timestep`: timesteps uniform in [min, max).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from train_helpers import RED, tiny_config, write_kohya

from animegen.train.config import ConfigError, LossSection, validate_config
from animegen.train.loss import debiased_weight, diffusion_loss, draw_noise, pyramid_noise


def _gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


def test_pyramid_noise_matches_a_hand_computed_two_level_pyramid():
    # On a 3x3 latent every ratio r in [2, 4) makes level 1 a 1x1 image (int(3 / r) = 1): bilinear upsampling
    # of 1x1 is that value everywhere, and the pyramid stops there.
    noise = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(7)
    got = pyramid_noise(noise.clone(), g, iterations=6, discount=0.3)
    ref = torch.Generator().manual_seed(7)
    torch.rand((), generator=ref)  # level 0 ratio (r^0 = 1: full size, upsampling is the identity)
    level0 = torch.randn(1, 4, 3, 3, generator=ref)[0]
    torch.rand((), generator=ref)  # level 1 ratio
    level1 = torch.randn(1, 4, 1, 1, generator=ref)[0]
    total = noise + level0 + 0.3 * level1
    want = total / total.std()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_pyramid_noise_is_unit_variance_and_adds_low_frequencies():
    white = torch.stack([torch.randn(4, 32, 32, generator=g) for g in _gens(64)])
    pyramid = torch.stack([pyramid_noise(torch.randn(4, 32, 32, generator=g), g, 6, 0.8) for g in _gens(64, 1)])
    assert abs(float(pyramid.std()) - 1.0) < 0.02
    assert all(abs(float(p.std()) - 1.0) < 1e-5 for p in pyramid)  # normalised per sample
    # The per-channel spatial mean (the lowest frequency) has variance 1/(32*32) for white noise.
    white_dc, pyr_dc = white.mean(dim=(2, 3)).var(), pyramid.mean(dim=(2, 3)).var()
    assert float(white_dc) < 3 / 1024 and float(pyr_dc) > 20 * float(white_dc)


def test_draw_noise_defaults_keep_the_plain_draw():
    cfg = LossSection()
    noise, noise_in, ts = draw_noise((4, 8, 8), _gens(3), 1000, cfg)
    for i, g in enumerate(_gens(3)):
        torch.testing.assert_close(noise[i], torch.randn((4, 8, 8), generator=g))
        assert int(ts[i]) == int(torch.randint(0, 1000, (1,), generator=g))
    assert noise_in is noise


def test_input_perturbation_noises_the_input_not_the_target():
    plain, _, plain_ts = draw_noise((4, 16, 16), _gens(32), 1000, LossSection())
    noise, noise_in, ts = draw_noise((4, 16, 16), _gens(32), 1000, LossSection(ip_noise_gamma=0.1))
    torch.testing.assert_close(noise, plain)  # the target noise is unchanged
    assert torch.equal(ts, plain_ts)
    extra = noise_in - noise
    assert abs(float(extra.std()) - 0.1) < 0.005 and abs(float(extra.mean())) < 0.005
    assert abs(float((extra * noise).mean())) < 0.005  # independent of the noise


def test_timesteps_are_uniform_in_min_max():
    cfg = LossSection(min_timestep=200, max_timestep=300)
    _, _, ts = draw_noise((1, 2, 2), _gens(5000), 1000, cfg)
    assert int(ts.min()) == 200 and int(ts.max()) == 299
    counts = np.bincount(ts.numpy() - 200, minlength=100)
    # each of the 100 values: binomial(5000, 1/100), sigma = sqrt(5000 * 0.01 * 0.99) ~ 7.0
    assert np.abs(counts - 50).max() < 5 * math.sqrt(5000 * 0.01 * 0.99)


def test_timestep_range_errors_name_the_keys():
    with pytest.raises(ConfigError, match="loss.min_timestep"):
        validate_config({"loss": {"min_timestep": 500, "max_timestep": 500}})
    with pytest.raises(ConfigError, match="loss.max_timestep"):
        draw_noise((1, 2, 2), _gens(1), 1000, LossSection(max_timestep=1001))


def _hand_snr(t: torch.Tensor) -> torch.Tensor:
    # diffusers' default "linear" DDPM betas: linspace(1e-4, 0.02, 1000)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1 - betas)[t.numpy()]
    return torch.tensor(abar / (1 - abar))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_debiased_estimation_weights_by_inverse_sqrt_snr(kind):
    sched = DDPMScheduler(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    ts = torch.tensor([0, 300, 999])
    per = ((pred - target) ** 2).mean(dim=(1, 2, 3)).double()
    s = _hand_snr(ts).clamp(max=1000.0)  # t = 0 has SNR ~ 1e4: clamped
    assert float(_hand_snr(ts)[0]) > 1000
    w = 1 / torch.sqrt(s) if kind == "epsilon" else 1 / (s + 1)
    torch.testing.assert_close(debiased_weight(_hand_snr(ts), kind == "v_prediction"),
                               w, rtol=1e-4, atol=1e-7)
    got = diffusion_loss(pred, target, ts, sched, LossSection(debiased_estimation_loss=True))
    assert abs(float(got) - float((per * w).mean())) < 1e-4 * float((per * w).mean())


def test_a_run_with_every_noise_and_caption_option_trains(tmp_path, tiny_sd15_dir, monkeypatch):
    import animegen.train.trainer as trainer_mod
    from animegen.train.trainer import Trainer

    drawn = []
    real = trainer_mod.draw_noise

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        drawn.append(out)
        return out

    monkeypatch.setattr(trainer_mod, "draw_noise", spy)
    data = write_kohya(tmp_path / "data", "red", RED, "zxq ||| {red|crimson} disk, flat, plain ||| end", n=2)
    cfg = tiny_config(tiny_sd15_dir, data, tmp_path / "run",
                      loss={"multires_noise_iterations": 6, "multires_noise_discount": 0.3, "ip_noise_gamma": 0.1,
                            "debiased_estimation_loss": True, "min_timestep": 100, "max_timestep": 900},
                      data={"caption_tag_dropout_rate": 0.3, "keep_tokens_separator": "|||", "shuffle_tags": True},
                      train={"max_steps": 2, "batch_size": 1, "device": "cpu"})
    result = Trainer(cfg).run()
    assert result.finished and len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert drawn and all(100 <= int(t) < 900 for _, _, ts in drawn for t in ts)
    assert all(not torch.equal(noise, noise_in) for noise, noise_in, _ in drawn)


def test_config_takes_kohyas_names():
    cfg = validate_config({"loss": {"multires_noise_iterations": 6, "multires_noise_discount": 0.3,
                                    "ip_noise_gamma": 0.1, "debiased_estimation_loss": True,
                                    "min_timestep": 0, "max_timestep": 1000}})
    assert cfg.loss.multires_noise_iterations == 6 and cfg.loss.max_timestep == 1000
    with pytest.raises(ConfigError, match="multires_noise_discount"):
        validate_config({"loss": {"multires_noise_discount": 1.5}})
