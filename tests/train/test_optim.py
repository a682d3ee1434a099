"""The AdamW optimizer: the fused kernel where torch has one (no per-parameter Python loop, the training
step's largest fixed cost on small models), with the AdamW update unchanged.

Reference: the AdamW algorithm (Loshchilov & Hutter, decoupled weight decay) as torch's `AdamW` documents
it, written out here step by step.
"""

from __future__ import annotations

import math

import torch

from animegen.train.config import OptimizerSection
from animegen.train.optim import make_optimizer


def _adamw_reference(p0: torch.Tensor, grads: list[torch.Tensor], lr, betas, eps, wd) -> torch.Tensor:
    p, m, v = p0.double().clone(), torch.zeros_like(p0, dtype=torch.float64), torch.zeros_like(p0, dtype=torch.float64)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p - lr * wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_adamw_uses_the_fused_kernel_on_cpu():
    param = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([{"params": [param], "lr": 1e-3}], OptimizerSection(name="adamw", lr=1e-3))
    assert opt.defaults["fused"] is True


def test_adamw_update_is_the_documented_algorithm():
    cfg = OptimizerSection(name="adamw", lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(64, generator=gen)
    grads = [torch.randn(64, generator=gen) * (i + 1) for i in range(4)]
    param = torch.nn.Parameter(p0.clone())
    opt = make_optimizer([{"params": [param], "lr": cfg.lr}], cfg)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    expected = _adamw_reference(p0, grads, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
    assert math.isclose(float((param.detach().double() - expected).abs().max()), 0.0, abs_tol=1e-6)
