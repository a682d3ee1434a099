"""FID, its bootstrap interval, KID and the sample-size warnings that keep them honest.

FID follows pytorch-fid's `calculate_frechet_distance` exactly (scipy `sqrtm`, the eps offset
when the covariance product is singular, the check on the imaginary part), so that the same
features give the same number. Feature sets smaller than the feature
dimension (the usual case: 2048-d features, hundreds of images) use the algebraically identical
low-rank form tr sqrt(S1 S2) = ||B1 B2^T||_* (B = centred features / sqrt(n-1)): exact, and seconds
instead of the minutes a 2048x2048 `sqrtm` takes on a small CPU. The bootstrap uses it too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

from animegen.core.errors import AnimegenError

FID_MIN_RELIABLE = 2048  # below this the 2048-d covariance is rank-deficient and FID biased upward
KID_MIN_RELIABLE = 100


class MetricError(AnimegenError):
    """A metric cannot give a meaningful number for these inputs (message says why and what to do)."""


@dataclass
class FeatureStats:
    """Mean and covariance of a feature set (what pytorch-fid stores in its `.npz`)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, feats: np.ndarray) -> FeatureStats:
        feats = check_features(feats, "features", min_count=2)
        return cls(mu=np.mean(feats, axis=0), sigma=np.cov(feats, rowvar=False), n=len(feats))


@dataclass
class KIDResult:
    mean: float
    std: float
    subset_size: int
    n_subsets: int
    warnings: list[str] = field(default_factory=list)


def check_features(feats: np.ndarray, name: str, min_count: int = 1) -> np.ndarray:
    """Validate a (N, D) feature array: finite values, enough rows. Returns it as float64."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise MetricError(f"{name}: expected a (N, D) feature array, got shape {feats.shape}")
    if len(feats) < min_count:
        raise MetricError(f"{name}: {len(feats)} image(s); this metric needs at least {min_count}. "
                          "Add images to the folder.")
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:10].tolist()
        raise MetricError(f"{name}: {int(bad.sum())} image(s) gave NaN/inf features (rows {rows}). "
                          "The images or the feature network are broken (e.g. fp16 overflow: use fp32).")
    return feats


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid computes it."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise MetricError(f"feature statistics differ in shape ({mu1.shape} vs {mu2.shape}): "
                          "they were computed with different networks")
    for arr in (mu1, mu2, sigma1, sigma2):
        if not np.isfinite(arr).all():
            raise MetricError("feature statistics contain NaN/inf; recompute them from the images")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular products; handled just below
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise MetricError(f"FID: sqrtm has a large imaginary component "
                              f"({np.max(np.abs(covmean.imag)):.3g}); the statistics are degenerate")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray, method: str = "auto") -> float:
    """FID between two (N, D) feature sets.

    `method`: "pytorch-fid" — mean/covariance then scipy `sqrtm` (bit-for-bit pytorch-fid's formula,
    but a 2048x2048 `sqrtm` takes minutes on a small CPU); "lowrank" — the same quantity through the
    nuclear norm of the centred cross-product (exact, fast when a set has fewer images than D);
    "auto" — lowrank when a set is smaller than D (where sqrtm of a singular product is itself only
    approximate), pytorch-fid otherwise.
    """
    real = check_features(real, "real set", 2)
    fake = check_features(fake, "generated set", 2)
    if method not in ("auto", "pytorch-fid", "lowrank"):
        raise MetricError(f"unknown FID method {method!r}; use auto, pytorch-fid or lowrank")
    if real.shape[1] != fake.shape[1]:
        raise MetricError(f"feature dimensions differ ({real.shape[1]} vs {fake.shape[1]}): "
                          "the sets were embedded with different networks")
    if method == "lowrank" or (method == "auto" and min(len(real), len(fake)) <= real.shape[1]):
        return _fid_lowrank(real, fake)
    a, b = FeatureStats.from_features(real), FeatureStats.from_features(fake)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid_stats_vs_features(mu: np.ndarray, sigma: np.ndarray, feats: np.ndarray) -> float:
    """FID between stored statistics (e.g. a pytorch-fid `.npz`) and a feature set.

    With S2 = B^T B (B = centred features / sqrt(n-1)), the non-zero eigenvalues of S1 S2 are those
    of the small symmetric matrix B S1 B^T, so tr sqrt(S1 S2) needs no 2048x2048 `sqrtm`.
    """
    feats = check_features(feats, "generated set", 2)
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.shape != (feats.shape[1],) or sigma.shape != (feats.shape[1],) * 2:
        raise MetricError(f"statistics have shape mu {mu.shape}, sigma {sigma.shape} but features are "
                          f"{feats.shape[1]}-d: they come from different networks")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise MetricError("the stored statistics contain NaN/inf")
    if len(feats) > feats.shape[1]:
        return frechet_distance(mu, sigma, feats.mean(0), np.cov(feats, rowvar=False))
    b = (feats - feats.mean(0)) / np.sqrt(len(feats) - 1)
    inner = np.linalg.eigvalsh(b @ sigma @ b.T)
    diff = mu - feats.mean(0)
    return float(diff @ diff + np.trace(sigma) + (b * b).sum() - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def _fid_lowrank(x: np.ndarray, y: np.ndarray) -> float:
    """FID through the nuclear norm of the centred-feature cross product (exact, O(n1 n2 min(n)))."""
    bx = (x - x.mean(0)) / np.sqrt(len(x) - 1)
    by = (y - y.mean(0)) / np.sqrt(len(y) - 1)
    diff = x.mean(0) - y.mean(0)
    nuclear = np.linalg.svd(bx @ by.T, compute_uv=False).sum()
    return float(diff @ diff + (bx * bx).sum() + (by * by).sum() - 2 * nuclear)


def _fid_eig(x: np.ndarray, y: np.ndarray) -> float:
    """FID via symmetric eigendecompositions, for sets larger than the feature dimension."""
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(sx)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root @ sy @ root)
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.trace(sx) + np.trace(sy) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def fast_fid(x: np.ndarray, y: np.ndarray) -> float:
    """Same value as `fid_from_features` (up to rounding), computed without a general sqrtm."""
    return _fid_lowrank(x, y) if min(len(x), len(y)) <= x.shape[1] else _fid_eig(x, y)


def fid_bootstrap_ci(real: np.ndarray, fake: np.ndarray, *, n_boot: int = 200, confidence: float = 0.95,
                     seed: int = 0, point: float | None = None, progress: bool = False) -> dict:
    """Bootstrap interval for the FID one would measure with another draw of the same sizes.

    Both sets are resampled with replacement. Resampling duplicates images, which inflates FID, so
    the percentile interval is shifted by the bootstrap estimate of that bias (`bias`); the interval
    describes the spread of FID at *these* set sizes, not the infinite-sample FID (small sets are
    biased upward — compare only FIDs measured with the same number of images).
    """
    from tqdm.auto import tqdm

    real = check_features(real, "real set", 2)
    fake = check_features(fake, "generated set", 2)
    if not 0 < confidence < 1:
        raise MetricError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 10:
        raise MetricError(f"n_boot must be at least 10 for a percentile interval, got {n_boot}")
    rng = np.random.default_rng(seed)
    base = fast_fid(real, fake)
    theta = base if point is None else float(point)
    boots = np.empty(n_boot)
    for i in tqdm(range(n_boot), desc="FID bootstrap", disable=not progress, leave=False):
        xi = real[rng.integers(0, len(real), len(real))]
        yi = fake[rng.integers(0, len(fake), len(fake))]
        boots[i] = fast_fid(xi, yi)
    bias = float(boots.mean() - base)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots - bias, [alpha, 1 - alpha])
    # Centre on the reported point estimate (pytorch-fid's value may differ from the fast one by rounding).
    shift = theta - base
    return {"low": float(lo + shift), "high": float(hi + shift), "confidence": confidence,
            "n_boot": n_boot, "bias": bias, "std": float(boots.std(ddof=1))}


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    m, n = len(x), len(y)
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, *, n_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> KIDResult:
    """Kernel Inception Distance: unbiased MMD^2 averaged over random subsets (mean and std).

    The subset size shrinks to the smaller set when a set is smaller than `subset_size`.
    """
    real = check_features(real, "real set", 2)
    fake = check_features(fake, "generated set", 2)
    if n_subsets < 1 or subset_size < 2:
        raise MetricError("KID needs n_subsets >= 1 and subset_size >= 2")
    m = min(subset_size, len(real), len(fake))
    notes = kid_warnings(len(real), len(fake))
    if m < subset_size:
        notes.append(f"KID subset size reduced from {subset_size} to {m} (the smaller set has {m} images).")
    if m == len(real) == len(fake):
        notes.append("Every subset is the whole set, so the KID std is 0 and says nothing about uncertainty.")
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for i in range(n_subsets):
        xi = real[rng.choice(len(real), m, replace=False)]
        yi = fake[rng.choice(len(fake), m, replace=False)]
        values[i] = _mmd2_unbiased(xi, yi)
    return KIDResult(mean=float(values.mean()), std=float(values.std()), subset_size=m,
                     n_subsets=n_subsets, warnings=notes)


def fid_warnings(n_real: int, n_fake: int, dim: int = 2048) -> list[str]:
    """Plain-language cautions about what an FID at these set sizes can mean."""
    notes = []
    smallest = min(n_real, n_fake)
    if smallest < max(FID_MIN_RELIABLE, dim):
        notes.append(f"FID computed from {n_real} real and {n_fake} generated images: with fewer than "
                     f"{max(FID_MIN_RELIABLE, dim)} images per set the {dim}-d covariance is rank-deficient "
                     "and FID is strongly biased upward; compare only FIDs computed with the same set "
                     "sizes, and read the bootstrap interval.")
    if smallest < 50:
        notes.append(f"Only {smallest} images in the smaller set: FID barely means anything here; "
                     "prefer KID, and more images.")
    return notes


def kid_warnings(n_real: int, n_fake: int) -> list[str]:
    smallest = min(n_real, n_fake)
    if smallest < KID_MIN_RELIABLE:
        return [f"KID from {smallest} images per subset: unbiased but noisy (read the std)."]
    return []
