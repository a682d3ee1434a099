"""The diffusion training objective: noising, targets, min-SNR-γ weights, Huber losses.

Noise and timesteps are drawn per sample from a generator seeded by (seed, step, slot in the global
batch), so the same sample gets the same noise whether one process or eight compute it and whether
the run was resumed or not.
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


def draw_noise(latent_shape: tuple[int, ...], seeds: list[torch.Generator], num_timesteps: int,
               noise_offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample noise (with optional offset noise on the channel means) and uniform timesteps."""
    noises, steps = [], []
    for g in seeds:
        n = torch.randn(latent_shape, generator=g)
        if noise_offset:
            n = n + noise_offset * torch.randn((latent_shape[0], 1, 1), generator=g)
        noises.append(n)
        steps.append(torch.randint(0, num_timesteps, (1,), generator=g))
    return torch.stack(noises), torch.cat(steps)


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


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, noise_scheduler,
                   cfg: LossSection, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over the batch; per-sample min-SNR-γ weights (Hang et al. 2023) when γ > 0, and
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
    if sample_weights is not None:
        per = per * sample_weights.to(per.device, per.dtype)
    return per.mean()
