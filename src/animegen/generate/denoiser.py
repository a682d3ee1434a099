"""The denoiser the samplers call: a noise-predicting UNet turned into D(x, sigma), with classifier-free guidance.

Contract. `CFGDenoiser(unet_fn, schedule, ...)` is k-diffusion's `CompVisDenoiser` / `CompVisVDenoiser`
(Karras et al. 2022, Table 1, VP preconditioning) combined with A1111's `CFGDenoiser`:

* the UNet sees `x / sqrt(sigma^2 + 1)` at the fractional timestep `schedule.sigma_to_t(sigma)` (log-sigma
  interpolation, never rounded);
* epsilon models: D = x - sigma * eps; v models: D = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1);
* CFG (Ho & Salimans 2022) on the denoised images, positive and negative in one batch (positive first):
  D = D_uncond + cfg_scale * (D_cond - D_uncond); with A1111's composable AND (Liu et al. 2022), parts i with
  weights w_i: D = D_uncond + sum_i (D_i - D_uncond) * (w_i * cfg_scale), all parts and the negative in one
  batch, as A1111's `CFGDenoiser.combine_denoised` (one part of weight 1 is plain CFG, bit for bit);
* conditioning that changes per step (A1111's prompt editing and alternation): `cond` may be a callable
  `step -> [(cond dict, weight), ...]` and `uncond` a callable `step -> cond dict`, where step counts this
  denoiser's calls from 0, as A1111's `CFGDenoiser.step` (a second-order sampler makes two calls a step);
* `guidance_rescale` phi > 0: CFG rescale (Lin et al. 2023, section 3.4) on the model's own output (eps or
  v, as diffusers' `guidance_rescale`): out = phi * out_cfg * std(out_cond) / std(out_cfg) + (1 - phi) * out_cfg,
  where out_cond is the positive prediction (with AND: out_uncond + sum_i w_i (out_i - out_uncond)).
  A1111 has no built-in CFG rescale; 0 (the default) is exactly A1111's guidance.

`eps(x, timestep)` is A1111's timestep-sampler view (DDIM, PLMS): the UNet at an integer timestep on the
unscaled x, CFG on epsilon, v converted to epsilon. `lcm=True` is A1111's LCM denoiser (`LCMSchedule`
timesteps and the consistency-model boundary scalings, sigma_data 0.5, timestep x 10). There we
deliberately differ from A1111: a v-prediction model is read as v (A1111's LCM reads every model as eps).

`unet_fn(x, t, cond)` runs the network on a batch: `cond` maps names to tensors batched like `x`
(encoder_hidden_states, SDXL's text_embeds/time_ids; every cond dict of a call has the same sequence length);
the engine builds it over diffusers' UNet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from animegen.generate.schedules import DiscreteSchedule, LCMSchedule

UNetFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]
PartsAt = Callable[[int], list[tuple[dict, float]]]  # denoiser call -> [(cond, AND weight)]
CondAt = Callable[[int], dict]  # denoiser call -> the negative cond


def _dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


class CFGDenoiser:
    """D(x, sigma) with classifier-free guidance over one UNet; see the module docstring."""

    def __init__(self, unet_fn: UNetFn, schedule: DiscreteSchedule, *, cond: dict | PartsAt, uncond: dict | CondAt,
                 cfg_scale: float, prediction_type: str = "epsilon", guidance_rescale: float = 0.0,
                 lcm: bool = False):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r} is not supported; use epsilon or v_prediction")
        self.unet_fn = unet_fn
        self.schedule = LCMSchedule(schedule) if lcm else schedule
        self.lcm = lcm
        self.cond = cond if callable(cond) else (lambda step: [(cond, 1.0)])
        self.uncond = uncond if callable(uncond) else (lambda step: uncond)
        self.cfg_scale = float(cfg_scale)
        self.v = prediction_type == "v_prediction"
        self.guidance_rescale = float(guidance_rescale)
        self.calls = 0  # network evaluations (each one batch of the positive parts + negative); A1111's step

    # ---- the network on every positive part and the negative at once ---------------------------------------
    def _outputs(self, x_in: torch.Tensor, t: torch.Tensor) -> tuple[list[tuple[torch.Tensor, float]], torch.Tensor]:
        parts, uncond = self.cond(self.calls), self.uncond(self.calls)
        conds = [c for c, _ in parts] + [uncond]
        batch = {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
        out = self.unet_fn(torch.cat([x_in] * len(conds)), torch.cat([t] * len(conds)), batch).to(torch.float32)
        self.calls += 1
        outs = out.split(x_in.shape[0])
        return [(o, w) for o, (_, w) in zip(outs, parts)], outs[-1]

    @staticmethod
    def _combine(parts: list[tuple[torch.Tensor, float]], out_u: torch.Tensor, scale: float) -> torch.Tensor:
        """out_u + sum_i (out_i - out_u) * (w_i * scale): A1111's combine_denoised."""
        out = out_u
        for out_i, weight in parts:
            out = out + (out_i - out_u) * (weight * scale)
        return out

    def _guided(self, parts: list[tuple[torch.Tensor, float]], out_u: torch.Tensor) -> torch.Tensor:
        out = self._combine(parts, out_u, self.cfg_scale)
        phi = self.guidance_rescale
        if phi > 0:
            out_c = parts[0][0] if len(parts) == 1 and parts[0][1] == 1.0 else self._combine(parts, out_u, 1.0)
            dims = list(range(1, out.ndim))
            rescaled = out * (out_c.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True))
            out = phi * rescaled + (1 - phi) * out
        return out

    # ---- k-diffusion view: D(x, sigma) ----------------------------------------------------------------------
    def _to_denoised(self, x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        s = _dims(sigma, x.ndim)
        if self.v:
            return out * (-s / (s ** 2 + 1) ** 0.5) + x * (1 / (s ** 2 + 1))
        return x + out * (-s)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.device, torch.float32).expand(x.shape[0])
        c_in = _dims(1 / (sigma ** 2 + 1) ** 0.5, x.ndim)
        t = self.schedule.sigma_to_t(sigma)
        parts, out_u = self._outputs(x * c_in, t)
        if self.guidance_rescale > 0:
            denoised = self._to_denoised(x, sigma, self._guided(parts, out_u))
            return self._lcm_scaled(x, sigma, denoised)
        d_parts = [(self._lcm_scaled(x, sigma, self._to_denoised(x, sigma, o)), w) for o, w in parts]
        d_u = self._lcm_scaled(x, sigma, self._to_denoised(x, sigma, out_u))
        return self._combine(d_parts, d_u, self.cfg_scale)

    def _lcm_scaled(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        if not self.lcm:
            return denoised
        st = _dims(self.schedule.sigma_to_t(sigma), x.ndim) * 10.0
        c_skip = 0.25 / (st ** 2 + 0.25)
        c_out = st / (st ** 2 + 0.25) ** 0.5
        return c_out * denoised + c_skip * x

    # ---- timestep view: eps(x, t) for DDIM / PLMS ------------------------------------------------------------
    def eps(self, x: torch.Tensor, timestep: float) -> torch.Tensor:
        """Guided epsilon at `timestep` (fractional for UniPC; v is converted at its integer part, as A1111)."""
        t = torch.full((x.shape[0],), float(timestep), device=x.device)
        parts, out_u = self._outputs(x, t)
        if self.v:
            a = self.schedule.alphas_cumprod[int(timestep)].to(torch.float64)
            sa, s1a = a.sqrt().to(torch.float32).item(), (1 - a).sqrt().to(torch.float32).item()
            parts, out_u = [(sa * o + s1a * x, w) for o, w in parts], sa * out_u + s1a * x
        return self._guided(parts, out_u)
