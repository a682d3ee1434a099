"""An independent reference for A1111 1.10's sampling, written for the tests (imports nothing from animegen).

Written from the algorithms' math (Karras et al. 2022; Lu et al. 2022 DPM-Solver(++); Song et al. DDIM;
Liu et al. PNDM; Zhao et al. UniPC; Xu et al. Restart; Luo et al. LCM) and A1111 1.10's documented choices
(its `sd_schedulers` table, per-sampler Automatic schedule, discard-penultimate-sigma, img2img step
truncation, per-image noise generators, one Brownian tree per image seed, zero-terminal SNR pinned at
4.8973451890853435e-08). It computes in float64 with NumPy / explicit loops, a different road from the
float32 torch code under test; the only shared pieces are torch's CPU generator and torchsde's
BrownianTree, which are what A1111 itself draws from.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torchsde
from scipy import integrate, stats

F64 = torch.float64
# sampler -> (Automatic schedule, discard penultimate sigma, noise: None | "ancestral" | "brownian")
A1111_SAMPLERS = {
    "DPM++ 2M": ("karras", False, None), "DPM++ SDE": ("karras", False, "brownian"),
    "DPM++ 2M SDE": ("exponential", False, "brownian"), "DPM++ 2M SDE Heun": ("exponential", False, "brownian"),
    "DPM++ 2S a": ("karras", False, "ancestral"), "DPM++ 3M SDE": ("exponential", True, "brownian"),
    "Euler a": ("uniform", False, "ancestral"), "Euler": ("uniform", False, None), "LMS": ("uniform", False, None),
    "Heun": ("uniform", False, None), "DPM2": ("karras", True, None), "DPM2 a": ("karras", True, "ancestral"),
    "Restart": ("karras", False, "ancestral"), "LCM": ("uniform", False, "ancestral"),
    "DDIM": (None, False, None), "PLMS": (None, False, None), "UniPC": (None, False, None),
}
SCHEDULES = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
             "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]


class Model:
    """The model's noise levels (float64 views of A1111's float32 alphas_cumprod)."""

    def __init__(self, beta_start=0.00085, beta_end=0.012, ztsnr=False, sdxl=False, lcm=False):
        self.args = dict(beta_start=beta_start, beta_end=beta_end, ztsnr=ztsnr, sdxl=sdxl)
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, 1000) ** 2
        ac = np.cumprod(1.0 - betas).astype(np.float32)
        if ztsnr:
            r = np.sqrt(ac)
            r = (r - r[-1]) * (r[0] / (r[0] - r[-1]))
            ac = (r ** 2).astype(np.float32)
            ac[-1] = 4.8973451890853435e-08
        self.full_ac = ac.astype(np.float64)
        self.lcm = lcm
        self.ac = self.full_ac[19::20] if lcm else self.full_ac
        self.sig = np.sqrt((1 - self.ac) / self.ac)
        self.logsig = np.log(self.sig)
        self.sdxl = sdxl

    def t(self, sigma):
        if self.lcm:
            return int(np.argmin(np.abs(math.log(sigma) - self.logsig))) * 20 + 19
        return float(np.interp(math.log(sigma), self.logsig, np.arange(len(self.sig))))

    def sigma(self, t):
        if self.lcm:
            t = min(max((t - 19) / 20, 0), len(self.sig) - 1)
        return float(np.exp(np.interp(t, np.arange(len(self.sig)), self.logsig)))


def schedule(label, n, m: Model):
    """A1111 1.10's schedule `label` (a concrete one) for n steps, descending, as float64 numpy."""
    lo, hi = m.sig[0], m.sig[-1]
    z = [0.0]
    if label == "Uniform":
        top = m.t(hi) if m.lcm else len(m.sig) - 1
        bottom = m.t(lo) if m.lcm else 0
        return np.array([m.sigma(t) for t in np.linspace(top, bottom, n)] + z)
    if label == "Karras":
        return np.array(list((hi ** (1 / 7) + np.linspace(0, 1, n) * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7) + z)
    if label in ("Exponential", "Polyexponential"):
        return np.array(list(np.exp(np.linspace(math.log(hi), math.log(lo), n))) + z)
    if label == "SGM Uniform":
        return np.array([m.sigma(t) for t in np.linspace(m.t(hi), m.t(lo), n + 1)[:-1]] + z)
    if label == "Normal":
        return np.array([m.sigma(t) for t in np.linspace(m.t(hi), m.t(lo), n)] + z)
    if label == "KL Optimal":
        i = np.arange(n + 1) / n
        return np.tan(i * math.atan(lo) + (1 - i) * math.atan(hi))
    if label == "Align Your Steps":
        base = ([14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029] if m.sdxl else
                [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029])
        if n == len(base):
            return np.array(base + z)
        log_up = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(base)), np.log(base[::-1]))
        return np.array(list(np.exp(log_up)[::-1]) + z)
    if label == "Simple":
        return np.array([m.sig[len(m.sig) - 1 - int(x * len(m.sig) / n)] for x in range(n)] + z)
    if label == "DDIM":
        return np.array(list(m.sig[1::max(len(m.sig) // n, 1)][::-1]) + z)
    if label == "Beta":
        return np.array([lo + stats.beta.ppf(q, 0.6, 0.6) * (hi - lo) for q in 1 - np.linspace(0, 1, n)] + z)
    raise KeyError(label)


def sampler_sigmas(sampler, label, steps, m):
    default, discard, _ = A1111_SAMPLERS[sampler]
    if label == "Automatic":
        label = default.replace("_", " ").title()
    s = schedule(label, steps + discard, m)
    return np.concatenate([s[:-2], s[-1:]]) if discard else s


class Noise:
    """One CPU generator per image seed; every draw is one randn per image, stacked."""

    def __init__(self, seeds, shape):
        self.g = [torch.Generator().manual_seed(s) for s in seeds]
        self.shape = shape

    def __call__(self, *_):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.g]).to(F64)


class Brownian:
    """k-diffusion's BrownianTreeNoiseSampler: a torchsde tree per seed over [min sigma > 0, max sigma]."""

    def __init__(self, seeds, shape, sigmas):
        lo, hi = torch.tensor(float(sigmas[sigmas > 0].min()), dtype=torch.float32), \
            torch.tensor(float(sigmas.max()), dtype=torch.float32)
        self.trees = [torchsde.BrownianTree(lo, torch.zeros(shape), hi, entropy=s) for s in seeds]

    def __call__(self, s, s_next):
        a, b = torch.tensor(float(s), dtype=torch.float32), torch.tensor(float(s_next), dtype=torch.float32)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        with warnings.catch_warnings():  # float32 rounding at the interval's ends, as in k-diffusion
            warnings.simplefilter("ignore", UserWarning)
            w = torch.stack([tree(lo, hi) for tree in self.trees]) * sign
        return (w / (b - a).abs().sqrt()).to(F64)


def denoiser(model_fn, m: Model, cond, uncond, cfg, v=False):
    """D(x, sigma) = CFG over the VP-preconditioned network (Karras et al. 2022 Table 1)."""
    def d(x, sigma):
        s = float(sigma)
        x_in = x / math.sqrt(s * s + 1)
        outs = []
        for c in (cond, uncond):
            out = model_fn(x_in, m.t(s), c).to(F64)
            den = out * (-s / math.sqrt(s * s + 1)) + x / (s * s + 1) if v else x - s * out
            if m.lcm:
                st = m.t(s) * 10.0
                den = st / math.sqrt(st ** 2 + 0.25) * den + 0.25 / (st ** 2 + 0.25) * x
            outs.append(den)
        return outs[1] + cfg * (outs[0] - outs[1])
    return d


def eps_fn(model_fn, m: Model, cond, uncond, cfg, v=False):
    def e(x, t):
        outs = []
        for c in (cond, uncond):
            out = model_fn(x, float(t), c).to(F64)
            if v:
                a = m.full_ac[int(t)]
                out = math.sqrt(a) * out + math.sqrt(1 - a) * x
            outs.append(out)
        return outs[1] + cfg * (outs[0] - outs[1])
    return e


def anc(s, s_next):
    up = min(s_next, math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
    return math.sqrt(s_next ** 2 - up ** 2), up


def run_sigmas(sampler, d, x, sig, noise):
    """The k-diffusion-style samplers (from their papers' update rules), float64."""
    lam = lambda s: -math.log(s)
    n = len(sig) - 1
    prev = []  # earlier denoised values, newest last
    hs = []
    ds = []
    if sampler == "Restart":
        return _restart(d, x, sig, noise)
    for i in range(n):
        s, sn = float(sig[i]), float(sig[i + 1])
        den = d(x, s)
        if sampler in ("Euler", "Heun", "DPM2") or (sampler in ("Euler a", "DPM2 a", "DPM++ 2S a")):
            ancestral = sampler in ("Euler a", "DPM2 a", "DPM++ 2S a")
            down, up = anc(s, sn) if ancestral and sn > 0 else (sn, 0.0)
            slope = (x - den) / s
            if sampler in ("Euler", "Euler a") or down == 0:
                x = x + slope * (down - s)
            elif sampler == "Heun":
                x2 = x + slope * (down - s)
                x = x + (slope + (x2 - d(x2, down)) / down) / 2 * (down - s)
            elif sampler in ("DPM2", "DPM2 a"):
                mid = math.exp((math.log(s) + math.log(down)) / 2)
                x2 = x + slope * (mid - s)
                x = x + (x2 - d(x2, mid)) / mid * (down - s)
            else:  # DPM++ 2S: midpoint in lambda, data prediction
                h = lam(down) - lam(s)
                mid = math.exp(-(lam(s) + h / 2))
                x2 = (mid / s) * x - math.expm1(-h / 2) * den
                x = (down / s) * x - math.expm1(-h) * d(x2, mid)
            if ancestral and sn > 0:
                x = x + noise(s, sn) * up
        elif sampler == "LMS":
            ds.append((x - den) / s)
            order = min(i + 1, 4)
            for j in range(order):
                def basis(tau, j=j, order=order, i=i):
                    return np.prod([(tau - sig[i - k]) / (sig[i - j] - sig[i - k]) for k in range(order) if k != j])
                x = x + integrate.quad(basis, sig[i], sig[i + 1], epsrel=1e-10)[0] * ds[-1 - j]
        elif sampler == "DPM++ 2M":
            h = lam(sn) - lam(s) if sn > 0 else math.inf
            if not prev or sn == 0:
                x = (sn / s) * x - math.expm1(-h) * den
            else:
                r = (lam(s) - lam(float(sig[i - 1]))) / h
                x = (sn / s) * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * den - prev[-1] / (2 * r))
        elif sampler == "DPM++ SDE":
            if sn == 0:
                x = x + (x - den) / s * (sn - s)
            else:
                h = lam(sn) - lam(s)
                mid = math.exp(-(lam(s) + h / 2))
                down, up = anc(s, mid)
                x2 = (down / s) * x - math.expm1(lam(s) - lam(down)) * den + noise(s, mid) * up
                den2 = d(x2, mid)
                down, up = anc(s, sn)
                x = (down / s) * x - math.expm1(lam(s) - lam(down)) * den2 + noise(s, sn) * up
        elif sampler in ("DPM++ 2M SDE", "DPM++ 2M SDE Heun"):
            if sn == 0:
                x = den
            else:
                h = lam(sn) - lam(s)
                x = (sn / s) * math.exp(-h) * x - math.expm1(-2 * h) * den
                if prev:
                    r = hs[-1] / h
                    coef = (-math.expm1(-2 * h) / (-2 * h) + 1) if sampler.endswith("Heun") else \
                        0.5 * -math.expm1(-2 * h)
                    x = x + coef / r * (den - prev[-1])
                x = x + noise(s, sn) * sn * math.sqrt(-math.expm1(-2 * h))
                hs.append(h)
        elif sampler == "DPM++ 3M SDE":
            if sn == 0:
                x = den
            else:
                h = lam(sn) - lam(s)
                he = 2 * h
                x = math.exp(-he) * x - math.expm1(-he) * den
                phi2 = math.expm1(-he) / he + 1
                if len(prev) >= 2:
                    r0, r1 = hs[-1] / h, hs[-2] / h
                    d10, d11 = (den - prev[-1]) / r0, (prev[-1] - prev[-2]) / r1
                    x = x + phi2 * (d10 + (d10 - d11) * r0 / (r0 + r1)) - (phi2 / he - 0.5) * (d10 - d11) / (r0 + r1)
                elif prev:
                    x = x + phi2 * (den - prev[-1]) / (hs[-1] / h)
                x = x + noise(s, sn) * sn * math.sqrt(-math.expm1(-2 * h))
            hs.append(lam(sn) - lam(s) if sn > 0 else None)
        elif sampler == "LCM":
            x = den + (noise(s, sn) * sn if sn > 0 else 0)
        prev.append(den)
    return x


def _karras(n, lo, hi):
    return np.array(list((hi ** (1 / 7) + np.linspace(0, 1, n) * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7) + [0.0])


def _restart(d, x, sig, noise):
    """Restart (Xu et al. 2023) with A1111's automatic restart list: Heun steps plus noisy jumps back up."""
    steps = len(sig) - 1
    segments = [(sig[i], sig[i + 1]) for i in range(steps)]
    if steps >= 20:
        k, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sig = _karras(steps - k * times, float(sig[-2]), float(sig[0]))
        at = int(np.argmin(np.abs(sig - 0.1)))
        top = int(np.argmin(np.abs(sig - 2)))
        segments = []
        for i in range(len(sig) - 1):
            segments.append((sig[i], sig[i + 1]))
            if i + 1 == at and top < at:
                up = _karras(k + 1, float(sig[at]), float(sig[top]))[:-1]
                segments += list(zip(up[:-1], up[1:])) * times
    last = None
    for a, b in segments:
        a, b = float(a), float(b)
        if last is not None and last < a:
            x = x + noise(last, a) * math.sqrt(a * a - last * last)
        slope = (x - d(x, a)) / a
        if b == 0:
            x = x + slope * (b - a)
        else:
            x2 = x + slope * (b - a)
            x = x + (slope + (x2 - d(x2, b)) / b) / 2 * (b - a)
        last = b
    return x


def timesteps(steps):
    return [min(t + 1, 999) for t in range(0, 1000, 1000 // steps)]


def run_timesteps(sampler, e, x, ts, m: Model, img2img=False):
    """DDIM (eta 0), PLMS and UniPC-bh1 on A1111's timesteps, float64."""
    ac = m.full_ac
    if sampler == "UniPC":
        return _unipc(e, x, ts, ac, img2img)
    old = []
    for idx in range(len(ts) - 1, 0, -1):
        a, ap = ac[ts[idx]], ac[ts[idx - 1]]

        def step(x, eps, a=a, ap=ap):
            return math.sqrt(ap) * (x - math.sqrt(1 - a) * eps) / math.sqrt(a) + math.sqrt(1 - ap) * eps
        eps = e(x, ts[idx])
        if sampler == "PLMS":
            if not old:
                eps_use = (eps + e(step(x, eps), ts[idx - 1])) / 2
            else:
                coeffs = {1: [3, -1], 2: [23, -16, 5], 3: [55, -59, 37, -9]}[len(old)]
                div = {1: 2, 2: 12, 3: 24}[len(old)]
                eps_use = sum(c * v for c, v in zip(coeffs, [eps] + old[::-1])) / div
            old = (old + [eps])[-3:]
            eps = eps_use
        x = step(x, eps)
    return x


def _unipc(e, x, ts, ac, img2img):
    """UniPC (Zhao et al. 2023) B(h) = h variant, data prediction, order 3 with lower orders at the ends."""
    t_grid = np.linspace(0, 1, 1001)[1:]
    log_a = 0.5 * np.log(ac)
    la = lambda t: float(np.interp(t, t_grid, log_a))
    std = lambda t: math.sqrt(1 - math.exp(2 * la(t)))
    lam = lambda t: la(t) - math.log(std(t))
    x0 = lambda x, t: (x - std(t) * e(x, (t - 0.001) * 1000)) / math.exp(la(t))
    n = len(ts)
    order = min(3, n)
    start = ts[-1] / 1000 + 0.001 if img2img else 1.0
    times = list(np.linspace(start, 0.001, n + 1).astype(np.float32).astype(np.float64))
    hist_t, hist_m = [times[0]], [x0(x, times[0])]
    for step in range(1, n + 1):
        k = min(order, step, n + 1 - step) if step >= order else step
        t = times[step]
        h = lam(t) - lam(hist_t[-1])
        rks = [(lam(hist_t[-1 - i]) - lam(hist_t[-1])) / h for i in range(1, k)] + [1.0]
        d1s = [(hist_m[-1 - i] - hist_m[-1]) / rks[i - 1] for i in range(1, k)]
        hh = -h
        phi = math.expm1(hh) / hh - 1
        b, fact = [], 1
        for i in range(1, k + 1):
            b.append(phi * fact / hh)
            fact *= i + 1
            phi = phi / hh - 1 / fact
        R = np.array([[r ** (i - 1) for r in rks] for i in range(1, k + 1)])
        base = std(t) / std(hist_t[-1]) * x - math.exp(la(t)) * math.expm1(hh) * hist_m[-1]
        scale = math.exp(la(t)) * hh
        pred = 0
        if d1s:
            rp = [0.5] if k == 2 else list(np.linalg.solve(R[:-1, :-1], b[:-1]))
            pred = sum(r * dd for r, dd in zip(rp, d1s))
        xt = base - scale * pred
        if step < n:
            rc = [0.5] if k == 1 else list(np.linalg.solve(R, b))
            mt = x0(xt, t)
            xt = base - scale * (sum(r * dd for r, dd in zip(rc[:-1], d1s)) + rc[-1] * (mt - hist_m[-1]))
            hist_t, hist_m = (hist_t + [t])[-order:], (hist_m + [mt])[-order:]
        x = xt
    return x


def a1111_sample(sampler, label, steps, model_fn, m: Model, cond, uncond, cfg, seeds, shape, v=False,
                 init=None, strength=None, fixed_steps=False):
    """Final latents A1111 1.10 would produce (txt2img, or img2img from `init` at `strength`; `fixed_steps`:
    `setup_img2img_steps` given the steps, as the hires pass calls it, so exactly `steps` run)."""
    if sampler == "LCM":
        m = Model(**m.args, lcm=True)
    noise = Noise(seeds, shape)
    first = noise()
    total, t_enc = steps, None
    if init is not None and fixed_steps:
        total, t_enc = int(steps / min(strength, 0.999)), steps - 1
    elif init is not None:
        t_enc = int(min(strength, 0.999) * steps)
    if A1111_SAMPLERS[sampler][0] is None:
        e = eps_fn(model_fn, m, cond, uncond, cfg, v)
        ts = timesteps(total)
        if init is None:
            return run_timesteps(sampler, e, first, ts, m)
        a = m.full_ac[ts[t_enc]]
        x = init.to(F64) * math.sqrt(a) + first * math.sqrt(1 - a)
        return run_timesteps(sampler, e, x, ts[:t_enc], m, img2img=True)
    sig = sampler_sigmas(sampler, label, total, m)
    full = sig
    if init is None:
        x = first * sig[0]
    else:
        sig = sig[total - t_enc - 1:]
        x = init.to(F64) + first * sig[0]
    kind = A1111_SAMPLERS[sampler][2]
    draw = Brownian(seeds, shape, full) if kind == "brownian" else noise
    return run_sigmas(sampler, denoiser(model_fn, m, cond, uncond, cfg, v), x, sig, draw)
