"""Optimizers and learning-rate schedules.

Prodigy defaults: `d0 = 1e-6`, `safeguard_warmup = False`, `use_bias_correction = True`. With the
safeguard warm-up on, Prodigy's step-size estimate d grows only as fast as the (small, warming-up) LR
lets it, and on short adapter runs it can sit near d0 = 1e-6 for most of the run so nothing is learned;
bias correction keeps the first steps' Adam moments from inflating the update instead. Prodigy expects
`optimizer.lr = 1.0` (it is a multiplier on the estimated step size).

AdamW runs torch's fused kernel wherever torch has one for the parameters' device (CPU and CUDA among
them): the same update, computed in one kernel instead of a Python loop over every adapter tensor,
which on CPU defaults to the per-tensor loop and cost ~10% of a small model's step.

`adamw8bit` / `paged_adamw8bit` are bitsandbytes' block-wise 8-bit AdamW (Dettmers et al. 2022): both
moments of a tensor of at least `min_8bit_size` elements in one byte per element plus one fp32 absmax per
256-element block, a quarter of AdamW's state. bitsandbytes runs them on CPU too, so they are tested here;
paging (optimizer state in CUDA unified memory, evicted to host RAM under pressure) exists on CUDA only,
and `paged_adamw8bit` is `adamw8bit` elsewhere.

`optimizer.fused_backward` (kohya's `--fused_backward_pass`, OneTrainer's "fused back pass"):
`FusedBackwardOptimizer` holds one optimizer per parameter and steps it from that parameter's
`register_post_accumulate_grad_hook`, then frees the gradient, so the backward pass never holds more than
one parameter's gradient (plus those still being computed). AdamW and Adafactor update each tensor from
its own gradient and state only, so the weights are those of the ordinary step. Its `param_groups` are the
per-parameter optimizers' own dicts: one LR scheduler over it sets every learning rate.
"""

from __future__ import annotations

import torch

from animegen.train.config import EIGHT_BIT, OptimizerSection


def make_optimizer(groups: list[dict], cfg: OptimizerSection) -> torch.optim.Optimizer:
    """`groups`: torch param groups, each with its own "lr". With `cfg.fused_backward` the steps run in the
    backward pass from here on (the hooks are registered now)."""
    if cfg.fused_backward:
        return FusedBackwardOptimizer(groups, lambda one: _make_one(one, cfg))
    return _make_one(groups, cfg)


def _make_one(groups: list[dict], cfg: OptimizerSection) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 fused=_fused_kernel_exists(groups) or None)
    if cfg.name in EIGHT_BIT:
        import bitsandbytes as bnb

        # bitsandbytes warns once per optimizer that paging is a CUDA feature; on CPU both are the same
        on_cuda = all(p.device.type == "cuda" for g in groups for p in g["params"])
        kind = bnb.optim.PagedAdamW8bit if cfg.name == "paged_adamw8bit" and on_cuda else bnb.optim.AdamW8bit
        return kind(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                    min_8bit_size=cfg.min_8bit_size)
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
    raise ValueError(f"optimizer.name {cfg.name!r}: choose adamw, adamw8bit, paged_adamw8bit, prodigy or adafactor")


def live_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds as per-parameter state (moments, code books, steps), each
    counted once: bitsandbytes puts one shared pair of code books in every parameter's state."""
    tensors = {id(v): v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)}
    return sum(v.numel() * v.element_size() for v in tensors.values())


class FusedBackwardOptimizer(torch.optim.Optimizer):
    """One optimizer per parameter, each stepped by its parameter's gradient hook during `backward()`.

    `step()` and `zero_grad()` do nothing (the steps ran, the gradients are gone), so a training loop
    written for an ordinary optimizer runs unchanged. `state_dict()` lists the per-parameter optimizers'
    states in parameter order; `load_state_dict` takes only such a list, for the same parameters.
    """

    def __init__(self, groups: list[dict], make_one):
        # torch.optim.Optimizer.__init__ is not called: it would build param_groups of its own
        self.optimizers = [make_one([{**g, "params": [p]}]) for g in groups for p in g["params"]]
        self.defaults = self.optimizers[0].defaults if self.optimizers else {}
        self._hooks = [o.param_groups[0]["params"][0].register_post_accumulate_grad_hook(self._stepper(o))
                       for o in self.optimizers]

    @staticmethod
    def _stepper(optimizer: torch.optim.Optimizer):
        @torch.no_grad()
        def step_and_free(param: torch.Tensor) -> None:
            optimizer.step()
            param.grad = None

        return step_and_free

    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        """The inner optimizers' own group dicts, looked up each time (`load_state_dict` replaces them), so
        an LR scheduler's writes reach the optimizers."""
        return [o.param_groups[0] for o in self.optimizers]

    @property
    def state(self) -> dict:  # type: ignore[override]
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    def step(self, closure=None):  # type: ignore[override]
        """Nothing left to do: every parameter was stepped when its gradient was complete."""
        return None if closure is None else closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing left to do: the hooks freed each gradient after its step."""

    def state_dict(self) -> dict:  # type: ignore[override]
        return {"fused_backward": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:  # type: ignore[override]
        states = state_dict.get("fused_backward")
        if states is None or len(states) != len(self.optimizers):
            found = "an ordinary optimizer's state" if states is None else f"{len(states)} parameters' states"
            raise ValueError(f"optimizer state: expected optimizer.fused_backward state for "
                             f"{len(self.optimizers)} parameters, found {found}; resume with the settings "
                             "the checkpoint was written with")
        for o, s in zip(self.optimizers, states, strict=True):
            o.load_state_dict(s)

    def remove_hooks(self) -> None:
        """Stop stepping in the backward pass (the parameters train no further through this optimizer)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __repr__(self) -> str:
        inner = type(self.optimizers[0]).__name__ if self.optimizers else "none"
        return f"FusedBackwardOptimizer({len(self.optimizers)} x {inner})"


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
