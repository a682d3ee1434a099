"""A1111's timestep samplers (DDIM, PLMS): CompVis-style steps over integer timesteps, not sigmas.

Contract. `a1111_timesteps(steps)` is A1111's spacing: 1, 1 + k, 1 + 2k, ... (k = 1000 // steps, clipped
to 999); a sampler walks it from the top and, as A1111 does, stops at the lowest timestep, so `steps`
timesteps make `steps - 1` updates (PLMS spends one extra evaluation on its first, 2nd-order step).
`model.eps(x, t)` is the guided noise prediction (`denoiser.CFGDenoiser.eps`). The "Schedule type" does not
apply to these samplers (A1111 ignores it for them too). x starts as unscaled unit noise (txt2img) or
`sqrt(a) x0 + sqrt(1 - a) noise` (img2img, `noised_latents`).

DDIM: Song et al. 2021, eq. 12, with A1111's eta (default 0: deterministic; alphas_prev in float64).
PLMS: Liu et al. 2022 (PNDM), pseudo linear multistep on epsilon, pseudo improved Euler to start.
UniPC: Zhao et al. 2023, the multistep predictor-corrector on the data prediction with A1111's defaults
(variant bh1, time-uniform steps in continuous time t = (timestep + 1) / 1000, order 3, lower order at the
end). It runs as many steps as there are timesteps; only their number (and, for img2img, the lowest one)
matters. Where we differ: below 3 steps the order is lowered to the step count (A1111 refuses).
"""

from __future__ import annotations

import torch


def a1111_timesteps(steps: int) -> torch.Tensor:
    """A1111's DDIM/PLMS timesteps for `steps` (ascending)."""
    return torch.clip(torch.arange(0, 1000, max(1000 // steps, 1)) + 1, 0, 999)


def _schedule_at(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor):
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    return alphas, alphas_prev, torch.sqrt(1 - alphas)


@torch.no_grad()
def sample_ddim(model, x, timesteps, *, callback=None, noise_sampler=None, eta=0.0):
    """DDIM over `timesteps` (ascending), from the top down to the lowest."""
    alphas, alphas_prev, sqrt_one_minus = _schedule_at(model.schedule.alphas_cumprod, timesteps)
    sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - alphas.double()) * (1 - alphas.double() / alphas_prev))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model.eps(x, int(timesteps[index]))
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        sigma_t, s1a = sigmas[index].item(), sqrt_one_minus[index].item()
        pred_x0 = (x - s1a * e_t) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1.0 - a_prev - sigma_t ** 2) ** 0.5 * e_t
        if sigma_t > 0:
            x = x + sigma_t * noise_sampler(None, None)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


@torch.no_grad()
def sample_plms(model, x, timesteps, *, callback=None, noise_sampler=None):
    """PLMS over `timesteps` (ascending), from the top down to the lowest."""
    alphas, alphas_prev, sqrt_one_minus = _schedule_at(model.schedule.alphas_cumprod, timesteps)
    old_eps: list[torch.Tensor] = []

    def step(x, e_t, index):
        a_t, a_prev, s1a = alphas[index].item(), alphas_prev[index].item(), sqrt_one_minus[index].item()
        pred_x0 = (x - s1a * e_t) / a_t ** 0.5
        return a_prev ** 0.5 * pred_x0 + (1.0 - a_prev) ** 0.5 * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model.eps(x, int(timesteps[index]))
        if not old_eps:
            x_prev, _ = step(x, e_t, index)
            e_next = model.eps(x_prev, int(timesteps[max(index - 1, 0)]))
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = step(x, e_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


def noised_latents(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, timestep: int):
    """img2img's start for a timestep sampler: x0 noised to `timestep` in VP form."""
    a = alphas_cumprod[int(timestep)]
    return x0 * torch.sqrt(a) + noise * torch.sqrt(1 - a)


class _VPSchedule:
    """The discrete VP schedule read in continuous time (UniPC's `NoiseScheduleVP('discrete')`)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.log_alpha = 0.5 * torch.log(alphas_cumprod.to(torch.float32))
        self.n = len(self.log_alpha)
        self.t = torch.linspace(0.0, 1.0, self.n + 1)[1:]

    def log_mean(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_t, piecewise linear in t (extended linearly past the ends)."""
        i = torch.clamp(torch.searchsorted(self.t, t.reshape(1)), 1, self.n - 1)[0]
        t0, t1, y0, y1 = self.t[i - 1], self.t[i], self.log_alpha[i - 1], self.log_alpha[i]
        return y0 + (t - t0) * (y1 - y0) / (t1 - t0)

    def std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_mean(t)))

    def lam(self, t):
        lm = self.log_mean(t)
        return lm - 0.5 * torch.log(1.0 - torch.exp(2.0 * lm))


def _unipc_update(vp, model_x0, x, x0s, t_prev, t, order, use_corrector, variant):
    lambda_0, lambda_t = vp.lam(t_prev[-1]), vp.lam(t)
    x0_prev = x0s[-1]
    sigma_0, sigma_t, alpha_t = vp.std(t_prev[-1]), vp.std(t), torch.exp(vp.log_mean(t))
    h = lambda_t - lambda_0
    rks, d1s = [], []
    for i in range(1, order):
        rk = (vp.lam(t_prev[-(i + 1)]) - lambda_0) / h
        rks.append(rk)
        d1s.append((x0s[-(i + 1)] - x0_prev) / rk)
    rks = torch.tensor([float(r) for r in rks] + [1.0])
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(float(h_phi_k * factorial / b_h))
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = torch.stack(rows), torch.tensor(b)
    d1 = torch.stack(d1s, dim=1) if d1s else None
    x_base = sigma_t / sigma_0 * x - alpha_t * h_phi_1 * x0_prev
    pred_res = 0
    if d1 is not None:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        pred_res = torch.einsum("k,bkchw->bchw", rhos_p.to(x.device), d1)
    x_t = x_base - alpha_t * b_h * pred_res
    model_t = None
    if use_corrector:
        rhos_c = (torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)).to(x.device)
        model_t = model_x0(x_t, t)
        corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1) if d1 is not None else 0
        x_t = x_base - alpha_t * b_h * (corr_res + rhos_c[-1] * (model_t - x0_prev))
    return x_t, model_t


@torch.no_grad()
def sample_unipc(model, x, timesteps, *, callback=None, noise_sampler=None, is_img2img=False, order=3,
                 variant="bh1"):
    """UniPC (multistep, data prediction) as A1111 runs it; see the module docstring."""
    vp = _VPSchedule(model.schedule.alphas_cumprod)
    steps = len(timesteps)
    order = min(order, steps)
    t_end = 1.0 / vp.n
    t_start = torch.tensor(float(timesteps[-1]) / 1000 + 1 / 1000) if is_img2img else torch.tensor(1.0)
    times = torch.linspace(float(t_start), t_end, steps + 1)

    def model_x0(x, t):
        noise = model.eps(x, float((t - 1.0 / vp.n) * 1000.0))
        return (x - vp.std(t) * noise) / torch.exp(vp.log_mean(t))

    def report(i, x, denoised):
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": denoised})

    x0s, t_prev = [model_x0(x, times[0])], [times[0]]
    for k in range(1, order):
        x, mx = _unipc_update(vp, model_x0, x, x0s, t_prev, times[k], k, True, variant)
        report(k - 1, x, mx)
        x0s.append(mx)
        t_prev.append(times[k])
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step)
        x, mx = _unipc_update(vp, model_x0, x, x0s, t_prev, times[step], step_order, step != steps, variant)
        report(step - 1, x, mx)
        x0s, t_prev = x0s[1:] + x0s[-1:], t_prev[1:] + [times[step]]
        if step < steps:
            x0s[-1] = mx if mx is not None else model_x0(x, times[step])
    return x
