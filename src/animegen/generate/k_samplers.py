"""Stateless samplers over a sigma schedule, in k-diffusion's style: the ones A1111 1.10 runs.

Contract. Every sampler is `sample(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
...)`: `model(x, sigma_batch, **extra_args)` is a denoiser D(x, sigma) (`denoiser.CFGDenoiser`), `x` the
starting latents already scaled to `sigmas[0]`, `sigmas` descending (usually ending in 0). `callback`
gets k-diffusion's dict {x, i, sigma, sigma_hat, denoised} once per step. `noise_sampler(sigma,
sigma_next)` gives unit Gaussian noise shaped like x: ancestral samplers draw from the per-image
generators (A1111's `ImageRNG.next()`), SDE samplers from a Brownian tree (`BrownianNoise`). Results equal
k-diffusion's (the version A1111 1.10 pins) and A1111's own extra samplers (Restart, LCM): the tests hold
them to an independent implementation.

Why our own and not diffusers': A1111 fidelity needs k-diffusion's sigma-space steps exactly (see
`schedules`); diffusers' solvers are discretised differently. Where we differ from k-diffusion: the Euler,
Heun and DPM2 samplers draw churn noise only when `s_churn` > 0 (k-diffusion draws and discards a sample
every step; nothing downstream of it changes), and LMS integrates its polynomial coefficients exactly
instead of with scipy's `quad` (equal to float64 rounding).
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager

import numpy as np
import torch


def to_d(x, sigma, denoised):
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """Split a step to sigma_to into a deterministic step to sigma_down plus fresh noise of size sigma_up."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _default_noise(x):
    return lambda sigma, sigma_next: torch.randn_like(x)


def _step(callback, x, i, sigma, denoised, sigma_hat=None):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
                  "denoised": denoised})


def _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler):
    gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _algorithm2(model, x, sigmas, extra_args, callback, noise_sampler, churn, step):
    """Karras et al. 2022, Algorithm 2's loop (optional churn, then `step` from sigma_hat to the next sigma)."""
    extra_args, noise_sampler = extra_args or {}, noise_sampler or _default_noise(x)
    s_in = x.new_ones([x.shape[0]])

    def denoise(y, sigma):
        return model(y, sigma * s_in, **extra_args)

    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, *churn, noise_sampler)
        denoised = denoise(x, sigma_hat)
        _step(callback, x, i, sigmas[i], denoised, sigma_hat)
        x = step(x, denoised, sigma_hat, sigmas[i + 1], denoise)
    return x


def _ancestral(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, step):
    """k-diffusion's ancestral loop: `step` down to sigma_down, then fresh noise of size sigma_up."""
    extra_args, noise_sampler = extra_args or {}, noise_sampler or _default_noise(x)
    s_in = x.new_ones([x.shape[0]])

    def denoise(y, sigma):
        return model(y, sigma * s_in, **extra_args)

    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _step(callback, x, i, sigmas[i], denoised)
        x = step(x, denoised, sigmas[i], sigma_down, denoise)
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _euler_step(x, denoised, sigma, sigma_next, denoise):
    return x + to_d(x, sigma, denoised) * (sigma_next - sigma)


def _heun_step(x, denoised, sigma, sigma_next, denoise):
    """Heun's 2nd-order step; Euler for the last step to 0."""
    d, dt = to_d(x, sigma, denoised), sigma_next - sigma
    if sigma_next == 0:
        return x + d * dt
    x_2 = x + d * dt
    return x + (d + to_d(x_2, sigma_next, denoise(x_2, sigma_next))) / 2 * dt


def _dpm2_step(x, denoised, sigma, sigma_next, denoise):
    """DPM-Solver-2 (Lu et al. 2022): the derivative at the log-sigma midpoint; Euler for the last step to 0."""
    d = to_d(x, sigma, denoised)
    if sigma_next == 0:
        return x + d * (sigma_next - sigma)
    sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    return x + to_d(x_2, sigma_mid, denoise(x_2, sigma_mid)) * (sigma_next - sigma)


def _dpmpp_2s_step(x, denoised, sigma, sigma_next, denoise):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1): data prediction at the midpoint in log-SNR time."""
    if sigma_next == 0:
        return _euler_step(x, denoised, sigma, sigma_next, denoise)
    t, t_next = _t(sigma), _t(sigma_next)
    h = t_next - t
    s = t + 0.5 * h
    x_2 = (_sigma(s) / _sigma(t)) * x - (-h * 0.5).expm1() * denoised
    return (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoise(x_2, _sigma(s))


@torch.no_grad()
def sample_euler(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Karras et al. 2022, Algorithm 2 with Euler steps (no churn by default)."""
    return _algorithm2(model, x, sigmas, extra_args, callback, noise_sampler, (s_churn, s_tmin, s_tmax, s_noise),
                       _euler_step)


@torch.no_grad()
def sample_heun(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Karras et al. 2022, Algorithm 2 (Heun's 2nd-order method)."""
    return _algorithm2(model, x, sigmas, extra_args, callback, noise_sampler, (s_churn, s_tmin, s_tmax, s_noise),
                       _heun_step)


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 steps in Karras' Algorithm 2."""
    return _algorithm2(model, x, sigmas, extra_args, callback, noise_sampler, (s_churn, s_tmin, s_tmax, s_noise),
                       _dpm2_step)


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
                           eta=1.0, s_noise=1.0):
    """Ancestral sampling with Euler steps (Song et al. 2021's reverse SDE, k-diffusion's split)."""
    return _ancestral(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, _euler_step)


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
                           eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM-Solver-2 steps."""
    return _ancestral(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, _dpm2_step)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
                              eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) with ancestral noise."""
    return _ancestral(model, x, sigmas, extra_args, callback, noise_sampler, eta, s_noise, _dpmpp_2s_step)


def lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial j on t_i, t_{i-1}, ..., t_{i-order+1}."""
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    nodes = [t[i - k] for k in range(order) if k != j]
    poly = np.poly1d([1.0])
    for node in nodes:
        poly *= np.poly1d([1.0, -node]) / (t[i - j] - node)
    antiderivative = poly.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


@torch.no_grad()
def sample_lms(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, order=4):
    """Linear multistep (Adams-Bashforth in sigma) of order up to 4, as k-diffusion's LMS."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    sigmas_np = sigmas.detach().cpu().numpy().astype(np.float64)
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _step(callback, x, i, sigmas[i], denoised)
        cur = min(i + 1, order)
        coeffs = [lms_coefficient(cur, sigmas_np, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def _t(sigma):
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
                     eta=1.0, s_noise=1.0, r=0.5):
    """DPM-Solver++ (stochastic, single-step 2nd order; k-diffusion's "DPM++ SDE"), Brownian noise."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or BrownianNoise(x, sigmas, seeds=None)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = get_ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise_sampler(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma(s) * s_in, **extra_args)
        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise_sampler(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2: multistep 2nd order in log-SNR time)."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _step(callback, x, i, sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
                        eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, SDE variant), midpoint or Heun correction, Brownian noise."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or BrownianNoise(x, sigmas, seeds=None)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None,
                        eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE (3rd-order multistep, k-diffusion's), Brownian noise."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or BrownianNoise(x, sigmas, seeds=None)
    s_in = x.new_ones([x.shape[0]])
    denoised_1 = denoised_2 = None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * \
                    (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_restart(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, s_noise=1.0):
    """Restart sampling (Xu et al. 2023) as A1111 runs it: Heun steps on a Karras schedule shortened by the
    restart steps; from 20 steps on, one (36+: two) restart from sigma ~0.1 back up to sigma ~2."""
    from animegen.generate.schedules import karras

    extra_args, noise_sampler = extra_args or {}, noise_sampler or _default_noise(x)
    s_in = x.new_ones([x.shape[0]])

    def denoise(y, sigma):
        return model(y, sigma * s_in, **extra_args)

    steps = sigmas.shape[0] - 1
    restart_list = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item(), None)
        sigmas = sigmas.to(x.device)
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_list:
            restart_steps, restart_times, restart_max = restart_list[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                restart = karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item(), None)[:-1]
                restart = restart.to(x.device)
                for _ in range(restart_times):
                    step_list.extend(zip(restart[:-1], restart[1:]))
    last_sigma = None
    for step_id, (old_sigma, new_sigma) in enumerate(step_list):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + noise_sampler(last_sigma, old_sigma) * s_noise * (old_sigma ** 2 - last_sigma ** 2) ** 0.5
        denoised = denoise(x, old_sigma)
        _step(callback, x, step_id, new_sigma, denoised, old_sigma)
        x = _heun_step(x, denoised, old_sigma, new_sigma, denoise)
        last_sigma = new_sigma
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None):
    """Latent consistency sampling (Luo et al. 2023, multistep): jump to D(x), re-noise to the next sigma."""
    extra_args, noise_sampler = extra_args or {}, noise_sampler or _default_noise(x)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _step(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


_TREE_NORMALS = threading.Lock()


@contextmanager
def _tree_normals(source: str | None):
    """torchsde's tree nodes draw their normals from `rng.randn_local(seed, size, source)` meanwhile, as A1111
    makes them (it replaces torchsde's `_randn` for good); None leaves torchsde's own generator."""
    if source is None:
        yield
        return
    from torchsde._brownian import brownian_interval

    from animegen.generate.rng import randn_local

    with _TREE_NORMALS:
        saved = brownian_interval._randn
        brownian_interval._randn = lambda size, dtype, device, seed: randn_local(seed, size, source, device).to(dtype)
        try:
            yield
        finally:
            brownian_interval._randn = saved


class BrownianNoise:
    """Unit noise from one seeded Brownian tree per image (k-diffusion's `BrownianTreeNoiseSampler` over
    `torchsde.BrownianTree`, the trees A1111 seeds with each image's seed): the same seed gives the same
    increments whatever the batch, and the increment over [sigma_next, sigma] is divided by its std.
    `source` (an `rng` noise source) is where the trees' normals come from, as in A1111."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int] | None, source: str | None = None):
        import torchsde

        positive = sigmas[sigmas > 0]
        t0, t1 = torch.as_tensor(positive.min()), torch.as_tensor(sigmas.max())
        self.t0, self.t1, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        self.source = source
        w0 = torch.zeros_like(x[0])
        if seeds is None:
            seeds = [int(s) for s in torch.randint(0, 2 ** 63 - 1, [x.shape[0]])]
        if len(seeds) != x.shape[0]:
            raise ValueError(f"BrownianNoise: {len(seeds)} seeds for a batch of {x.shape[0]}")
        with _tree_normals(source):
            self.trees = [torchsde.BrownianTree(self.t0, w0, self.t1, entropy=int(s)) for s in seeds]

    def __call__(self, sigma, sigma_next):
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        with warnings.catch_warnings(), _tree_normals(self.source):  # torchsde warns of float32 end rounding
            warnings.simplefilter("ignore", UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * (self.sign * sign)
        return w / (t1 - t0).abs().sqrt()
