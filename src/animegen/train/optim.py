"""Optimizers and learning-rate schedules.

Prodigy defaults: `d0 = 1e-6`, `safeguard_warmup = False`, `use_bias_correction = True`. With the
safeguard warm-up on, Prodigy's step-size estimate d grows only as fast as the (small, warming-up) LR
lets it, and on short adapter runs it can sit near d0 = 1e-6 for most of the run so nothing is learned;
bias correction keeps the first steps' Adam moments from inflating the update instead. Prodigy expects
`optimizer.lr = 1.0` (it is a multiplier on the estimated step size).

AdamW runs torch's fused kernel wherever torch has one for the parameters' device (CPU and CUDA among
them): the same update, computed in one kernel instead of a Python loop over every adapter tensor,
which on CPU defaults to the per-tensor loop and cost ~10% of a small model's step.
"""

from __future__ import annotations

import torch

from animegen.train.config import OptimizerSection


def make_optimizer(groups: list[dict], cfg: OptimizerSection) -> torch.optim.Optimizer:
    """`groups`: torch param groups, each with its own "lr"."""
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 fused=_fused_kernel_exists(groups) or None)
    if cfg.name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, d0=cfg.prodigy_d0,
                       safeguard_warmup=cfg.prodigy_safeguard_warmup,
                       use_bias_correction=cfg.prodigy_use_bias_correction)
    if cfg.name == "adafactor":
        from transformers.optimization import Adafactor

        # An explicit LR (no relative step) so schedules and warm-up behave as for the other optimizers.
        return Adafactor(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    raise ValueError(f"optimizer.name {cfg.name!r}: choose adamw, adamw8bit, prodigy or adafactor")


def _fused_kernel_exists(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW takes every parameter (floating point, on a device it has a kernel for)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a private torch helper; without it, the per-tensor loop
        return False
    devices = _get_fused_kernels_supported_devices()
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in devices for p in params)


def make_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerSection, max_steps: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                         num_training_steps=max_steps)
