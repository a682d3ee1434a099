"""The diffusion training objective: noising, targets, min-SNR-γ and debiased weights, Huber losses.

Noise and timesteps are drawn per sample from a generator seeded by (seed, step, slot in the global
batch), so the same sample gets the same noise whether one process or eight compute it and whether
the run was resumed or not. Each option draws only when it is on and after the draws of the ones before
it (noise, offset, timestep, pyramid, input perturbation), so turning one on leaves the others' draws be.

kohya's noise options, as pure functions of a sample's generator (kohya sd-scripts
`library/custom_train_functions.py`): offset noise, multi-resolution (pyramid) noise, input-perturbation
noise (the UNet sees it, the target does not), a timestep range; and the debiased-estimation weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from animegen.core.seeds import derive_seed
from animegen.train.config import LossSection


def sample_generator(seed: int, step: int, slot: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed("noise", seed, step, slot))
    return g


def make_noise_scheduler(base_scheduler_config: dict, prediction_type: str, zero_terminal_snr: bool | None):
    """A DDPM training scheduler with the base model's betas, target and zero-terminal-SNR rescaling;
    `prediction_type` other than "auto" and a `zero_terminal_snr` other than None override the base's."""
    from diffusers import DDPMScheduler

    config = {k: v for k, v in dict(base_scheduler_config).items() if not k.startswith("_")}
    if prediction_type != "auto":
        config["prediction_type"] = prediction_type
    if zero_terminal_snr is not None:
        config["rescale_betas_zero_snr"] = zero_terminal_snr
    return DDPMScheduler.from_config(config)


def pyramid_noise(noise: torch.Tensor, g: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise for one sample (C, H, W), kohya's `pyramid_noise_like`:

        n' = n + sum_{i=0}^{K-1} discount^i * up(randn(C, floor(H / r_i^i), floor(W / r_i^i))),  r_i ~ U[2, 4)

    with `up` bilinear upsampling to (H, W), stopping after the first level 1 px high or wide, then n' / std(n').
    Unlike kohya (std over the whole batch) the std is the sample's own, so a sample's noise does not depend
    on its batch-mates."""
    c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = 2.0 + 2.0 * float(torch.rand((), generator=g))
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        level = torch.randn((1, c, hn, wn), generator=g)
        out += discount**i * F.interpolate(level, size=(h, w), mode="bilinear", align_corners=False)[0]
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def timestep_range(cfg: LossSection, num_timesteps: int) -> tuple[int, int]:
    """[low, high) of the training timesteps: loss.min_timestep / loss.max_timestep, high defaulting to
    the scheduler's `num_timesteps`."""
    high = num_timesteps if cfg.max_timestep is None else cfg.max_timestep
    if high > num_timesteps:
        from animegen.train.config import ConfigError

        raise ConfigError(f"loss.max_timestep = {high}: the noise scheduler has {num_timesteps} timesteps; "
                          f"use at most {num_timesteps} (or leave it unset)")
    if cfg.min_timestep >= high:
        from animegen.train.config import ConfigError

        raise ConfigError(f"loss.min_timestep = {cfg.min_timestep} must be below {high}, the end of the range")
    return cfg.min_timestep, high


def draw_noise(latent_shape: tuple[int, ...], seeds: list[torch.Generator], num_timesteps: int,
               cfg: LossSection) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (noise, input noise, timesteps). `noise` (offset noise on the channel means with
    loss.noise_offset, then pyramid noise with loss.multires_noise_iterations) is the target's; the UNet
    input is noised with `noise + ip_noise_gamma * randn` (the same tensor as `noise` when that is 0).
    Timesteps are uniform in [loss.min_timestep, loss.max_timestep)."""
    low, high = timestep_range(cfg, num_timesteps)
    noises, inputs, steps = [], [], []
    for g in seeds:
        n = torch.randn(latent_shape, generator=g)
        if cfg.noise_offset:
            n = n + cfg.noise_offset * torch.randn((latent_shape[0], 1, 1), generator=g)
        steps.append(torch.randint(low, high, (1,), generator=g))
        if cfg.multires_noise_iterations:
            n = pyramid_noise(n, g, cfg.multires_noise_iterations, cfg.multires_noise_discount)
        noises.append(n)
        if cfg.ip_noise_gamma:
            inputs.append(n + cfg.ip_noise_gamma * torch.randn(latent_shape, generator=g))
    noise = torch.stack(noises)
    return noise, torch.stack(inputs) if inputs else noise, torch.cat(steps)


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod).clamp_min(1e-20)


def target_for(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"model.prediction_type {kind!r} is not trainable; use 'epsilon' or 'v_prediction'")


def debiased_weight(snr_t: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """kohya's debiased estimation: w = 1 / sqrt(min(SNR, 1000)), or 1 / (min(SNR, 1000) + 1) for
    v-prediction (the clamp keeps t = 0, SNR ~ 1e4 or inf, finite)."""
    s = snr_t.clamp(max=1000.0)
    return 1.0 / (s + 1.0) if v_prediction else 1.0 / torch.sqrt(s)


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, noise_scheduler,
                   cfg: LossSection, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over the batch; per-sample min-SNR-γ weights (Hang et al. 2023) when γ > 0, the
    debiased-estimation weight with loss.debiased_estimation_loss (both multiply, as in kohya), and
    `sample_weights` (e.g. prior_loss_weight on regularisation images) multiplied in before the mean."""
    pred, target = pred.float(), target.float()
    if cfg.type == "l2":
        per = F.mse_loss(pred, target, reduction="none")
    elif cfg.type == "huber":  # pseudo-Huber: quadratic near 0, linear in the tails
        c = cfg.huber_c
        per = 2 * c * (torch.sqrt((pred - target) ** 2 + c * c) - c)
    else:
        per = F.smooth_l1_loss(pred, target, reduction="none", beta=cfg.huber_c)
    per = per.mean(dim=list(range(1, per.ndim)))
    if cfg.min_snr_gamma > 0:
        s = snr(noise_scheduler, timesteps)
        clipped = torch.minimum(s, torch.full_like(s, cfg.min_snr_gamma))
        if noise_scheduler.config.prediction_type == "v_prediction":
            weight = clipped / (s + 1)
        else:
            weight = clipped / s.clamp_min(1e-8)
        per = per * weight.to(per.dtype)
    if cfg.debiased_estimation_loss:
        v_pred = noise_scheduler.config.prediction_type == "v_prediction"
        per = per * debiased_weight(snr(noise_scheduler, timesteps), v_pred).to(per.dtype)
    if sample_weights is not None:
        per = per * sample_weights.to(per.device, per.dtype)
    return per.mean()
