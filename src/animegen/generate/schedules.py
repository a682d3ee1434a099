"""A1111 1.10's noise schedules: the model's discrete sigmas and the "Schedule type" functions over them.

Contract. `DiscreteSchedule.from_config` turns a diffusers scheduler config (betas, zero-terminal-SNR
flag) into the 1000 training sigmas exactly as A1111 gets them from an LDM checkpoint: betas and their
cumulative product in float64, stored as float32 `alphas_cumprod`, `sigma = sqrt((1 - a) / a)`. It maps
sigma to a fractional timestep by linear interpolation in log-sigma and back (k-diffusion's
`CompVisDenoiser`). `schedule_sigmas(label, n, schedule)` is A1111's `sd_schedulers` table: every
function returns the descending sigmas a sampler walks (n + 1 values; most end in 0).

Zero-terminal SNR as A1111 does it (its "Noise schedule: Zero Terminal SNR" setting, which we turn on
for models whose config says `rescale_betas_zero_snr`): sqrt(alphas_cumprod) is shifted and rescaled
(Lin et al. 2023, Algorithm 1) and the last value set to 4.8973451890853435e-08, so the largest sigma is
about 4518 instead of infinite, and every sampler and schedule runs unchanged.

Why not diffusers' schedulers: they space timesteps "leading" from the model config (t = 901...1 where
A1111 spans 999...0), round timesteps to integers where k-diffusion interpolates in log-sigma, take
Karras' sigma_max from the spaced timesteps and compute the betas in float32; each moves the latents
by percents (issue #13). We deliberately differ from A1111 in nothing here; A1111 options that are off
by default (`use_old_karras_scheduler_sigmas`, custom sigma_min/max/rho, downcast alphas_cumprod) are
not offered.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from animegen.core.errors import AnimegenError
from animegen.generate.sampler_names import SCHEDULE_NAMES, find_schedule_name, resolve_schedule_name

ZTSNR_LAST_ALPHA_CUMPROD = 4.8973451890853435e-08  # A1111's rescale_zero_terminal_snr_abar
BETA_ALPHA = BETA_BETA = 0.6  # A1111's defaults for the Beta schedule (beta_dist_alpha / beta_dist_beta)
# Align Your Steps sigmas (NVIDIA's published 10-step schedules), as A1111 1.10 lists them
AYS_SD1 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def betas_from_config(config: dict) -> np.ndarray:
    """The training betas (float64) a diffusers scheduler config describes."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=np.float64)
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if kind == "scaled_linear":  # LDM's "linear": linear in sqrt(beta)
        return np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    if kind == "linear":
        return np.linspace(start, end, n, dtype=np.float64)
    if kind == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)])
    raise AnimegenError(f"beta_schedule {kind!r} in the model's scheduler config is not supported; "
                        "use scaled_linear, linear or squaredcos_cap_v2")


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's zero-terminal-SNR rescale of float32 alphas_cumprod (last value pinned, not zero)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root ** 2
    out[-1] = ZTSNR_LAST_ALPHA_CUMPROD
    return out


class DiscreteSchedule:
    """The model's 1000 sigmas (ascending), sigma <-> fractional timestep, and the uniform schedule."""

    def __init__(self, alphas_cumprod: torch.Tensor, *, is_sdxl: bool = False):
        self.alphas_cumprod = alphas_cumprod.to(torch.float32)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.is_sdxl = is_sdxl  # Align Your Steps has one list per family

    @classmethod
    def from_config(cls, config: dict, *, is_sdxl: bool = False, zero_terminal_snr: bool | None = None):
        """From a diffusers scheduler config; `zero_terminal_snr` None follows `rescale_betas_zero_snr`."""
        alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas_from_config(config))).to(torch.float32)
        if zero_terminal_snr is None:
            zero_terminal_snr = bool(config.get("rescale_betas_zero_snr", False))
        if zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        return cls(alphas_cumprod, is_sdxl=is_sdxl)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of `sigma`: linear interpolation of the index in log-sigma."""
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas.to(sigma.device)[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        log_sigmas = self.log_sigmas.to(sigma.device)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigmas = self.log_sigmas.to(t.device)
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    def uniform_sigmas(self, n: int) -> torch.Tensor:
        """n sigmas at timesteps evenly spaced from the last (999) to 0, then 0 (k-diffusion's get_sigmas)."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


# ---- A1111's schedule types: f(n, sigma_min, sigma_max, schedule) -> descending sigmas ----------------------

def karras(n, sigma_min, sigma_max, schedule, rho=7.0):
    """Karras et al. 2022, eq. 5: sigmas evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(n, sigma_min, sigma_max, schedule):
    """Evenly spaced in log-sigma."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n, sigma_min, sigma_max, schedule, rho=1.0):
    """A polynomial (power rho) in log-sigma; rho 1 is the exponential schedule."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def uniform(n, sigma_min, sigma_max, schedule):
    return schedule.uniform_sigmas(n)


def sgm_uniform(n, sigma_min, sigma_max, schedule):
    """n timesteps evenly spaced from t(sigma_max) to t(sigma_min), the last dropped (SGM's discretisation)."""
    return normal(n, sigma_min, sigma_max, schedule, sgm=True)


def normal(n, sigma_min, sigma_max, schedule, sgm=False):
    """n timesteps evenly spaced from t(sigma_max) to t(sigma_min) inclusive (ComfyUI's "normal")."""
    start = schedule.sigma_to_t(torch.tensor(sigma_max))
    end = schedule.sigma_to_t(torch.tensor(sigma_min))
    timesteps = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return torch.tensor([float(schedule.t_to_sigma(t)) for t in timesteps] + [0.0], dtype=torch.float32)


def kl_optimal(n, sigma_min, sigma_max, schedule):
    """KL-optimal schedule (Sabour et al. 2024, "Align Your Steps" appendix): evenly spaced in arctan(sigma).

    Ends at sigma_min, not 0, as in A1111.
    """
    alpha_min, alpha_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    steps = torch.arange(n + 1)
    return torch.tan(steps / n * alpha_min + (1.0 - steps / n) * alpha_max)


def align_your_steps(n, sigma_min, sigma_max, schedule):
    """NVIDIA's Align Your Steps 10-step sigmas (per family), log-linearly resampled to n steps."""
    sigmas = list(AYS_SDXL if schedule.is_sdxl else AYS_SD1)
    if n != len(sigmas):
        xs = np.linspace(0, 1, len(sigmas))
        ys = np.log(sigmas[::-1])
        sigmas = list(np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1])
    return torch.tensor(sigmas + [0.0], dtype=torch.float32)


def simple(n, sigma_min, sigma_max, schedule):
    """Every (1000 / n)-th training sigma from the top, floored (ComfyUI's "simple")."""
    stride = len(schedule.sigmas) / n
    return torch.tensor([float(schedule.sigmas[-(1 + int(x * stride))]) for x in range(n)] + [0.0],
                        dtype=torch.float32)


def ddim_uniform(n, sigma_min, sigma_max, schedule):
    """The training sigmas at timesteps 1, 1 + k, 1 + 2k, ... (k = 1000 // n), descending: DDIM's spacing."""
    stride = max(len(schedule.sigmas) // n, 1)
    picked = [float(schedule.sigmas[x]) for x in range(1, len(schedule.sigmas), stride)]
    return torch.tensor(picked[::-1] + [0.0], dtype=torch.float32)


def beta(n, sigma_min, sigma_max, schedule, alpha=BETA_ALPHA, beta_=BETA_BETA):
    """Lee et al. 2024, "Beta Sampling is All You Need": sigmas at Beta(alpha, beta) quantiles, linear in sigma."""
    from scipy import stats

    quantiles = [stats.beta.ppf(x, alpha, beta_) for x in 1 - np.linspace(0, 1, n)]
    return torch.tensor([sigma_min + q * (sigma_max - sigma_min) for q in quantiles] + [0.0],
                        dtype=torch.float32)


@dataclass(frozen=True)
class ScheduleType:
    """One of A1111 1.10's "Schedule type" entries: internal name, UI label, function (None = Automatic)."""

    name: str
    label: str
    function: Callable | None
    aliases: tuple[str, ...] = ()


# the names and aliases are `sampler_names`' (torch-free); here each label gets its sigma function
_FUNCTIONS: dict[str, Callable | None] = {
    "Automatic": None, "Uniform": uniform, "Karras": karras, "Exponential": exponential,
    "Polyexponential": polyexponential, "SGM Uniform": sgm_uniform, "KL Optimal": kl_optimal,
    "Align Your Steps": align_your_steps, "Simple": simple, "Normal": normal, "DDIM": ddim_uniform, "Beta": beta,
}

SCHEDULE_TYPES: dict[str, ScheduleType] = {
    n.label: ScheduleType(n.name, n.label, _FUNCTIONS[n.label], n.aliases) for n in SCHEDULE_NAMES.values()
}


def find_schedule_type(name: str | None) -> ScheduleType | None:
    """The schedule type called `name` (label, internal name or alias; any case); None when unknown."""
    found = find_schedule_name(name)
    return None if found is None else SCHEDULE_TYPES[found.label]


def resolve_schedule_type(name: str | None) -> ScheduleType:
    """Like `find_schedule_type`, but an unknown name is an error listing the valid ones (and a near miss)."""
    return SCHEDULE_TYPES[resolve_schedule_name(name).label]


def schedule_sigmas(schedule_type: ScheduleType | str, n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """The sigmas (float32, CPU) of `schedule_type` for n steps over the model's sigma range.

    "Automatic" here means the model's uniform schedule; the per-sampler default is the sampler's business
    (`samplers.sampler_sigmas`).
    """
    kind = resolve_schedule_type(schedule_type) if isinstance(schedule_type, str) else schedule_type
    if kind.function is None:
        return schedule.uniform_sigmas(n)
    sigma_min, sigma_max = schedule.sigma_min.item(), schedule.sigma_max.item()
    return kind.function(n, sigma_min, sigma_max, schedule).to(torch.float32).cpu()


class LCMSchedule(DiscreteSchedule):
    """A1111's LCM view of the model: the 50 sigmas at timesteps 19, 39, ..., 999, with a timestep the
    nearest of those (LCM's original 50-step training discretisation; Luo et al. 2023)."""

    ORIGINAL_STEPS = 50

    def __init__(self, base: DiscreteSchedule):
        self.skip = len(base.alphas_cumprod) // self.ORIGINAL_STEPS
        valid = base.alphas_cumprod[self.skip - 1::self.skip][: self.ORIGINAL_STEPS]
        super().__init__(valid, is_sdxl=base.is_sdxl)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log() - self.log_sigmas.to(sigma.device)[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip + (self.skip - 1)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        index = torch.clamp(((t - (self.skip - 1)) / self.skip).float(), min=0, max=len(self.sigmas) - 1)
        return super().t_to_sigma(index)

    def uniform_sigmas(self, n: int) -> torch.Tensor:
        start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
        return _append_zero(self.t_to_sigma(torch.linspace(float(start), float(end), n)))
