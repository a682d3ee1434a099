"""FID, its bootstrap interval and KID against independent reference computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from eval_testutils import write_images
from scipy import linalg

from animegen.evaluate.metrics import (
    MetricError,
    fast_fid,
    fid_bootstrap_ci,
    fid_from_features,
    fid_stats_vs_features,
    fid_warnings,
    frechet_distance,
    kid,
)


def reference_fid(x, y, eps=0.0):
    """Textbook FID through the symmetric form tr sqrt(S1^1/2 S2 S1^1/2) (scipy eigh, not sqrtm(S1 S2))."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False) + eps * np.eye(x.shape[1]), np.cov(y, rowvar=False) + eps * np.eye(x.shape[1])
    w, v = linalg.eigh(s1)
    root = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = linalg.eigvalsh(root @ s2 @ root)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def gaussian_sets(n1, n2, d, seed, shift=0.5):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(n1, d)) @ a
    y = rng.normal(size=(n2, d)) @ (a + 0.3 * np.eye(d)) + shift
    return x, y


def test_fid_matches_direct_scipy_computation_full_rank():
    x, y = gaussian_sets(300, 250, 16, seed=0)
    assert fid_from_features(x, y) == pytest.approx(reference_fid(x, y), rel=1e-9, abs=1e-9)


def test_fid_on_inception_features_matches_scipy(fid_net, tmp_path):
    from animegen.evaluate.features import folder_features

    write_images(tmp_path / "a", 3, seed=3)
    write_images(tmp_path / "b", 2, seed=4, sizes=((48, 96),))
    fa = folder_features(tmp_path / "a", fid_net, progress=False).features.astype(np.float64)
    fb = folder_features(tmp_path / "b", fid_net, progress=False).features.astype(np.float64)
    assert fa.shape == (3, 2048) and fb.shape == (2, 2048)
    # A 2048x2048 scipy sqrtm takes minutes on a shared 2-core CI box, so the scipy reference runs on
    # the first 48 feature dimensions (still fewer images than dimensions: the singular case).
    sub_a, sub_b = fa[:, :48], fb[:, :48]
    for method in ("auto", "lowrank", "pytorch-fid"):
        assert fid_from_features(sub_a, sub_b, method=method) == pytest.approx(
            reference_fid(sub_a, sub_b), rel=1e-5, abs=1e-6)
    full = fid_from_features(fa, fb)  # auto -> lowrank at 2048-d
    assert np.isfinite(full) and full > 0
    assert full == pytest.approx(fast_fid(fa, fb), rel=1e-9)


def test_lowrank_and_pytorch_fid_formulas_agree_when_sets_are_smaller_than_dim():
    x, y = gaussian_sets(10, 7, 32, seed=11)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    pytorch_fid_value = frechet_distance(x.mean(0), s1, y.mean(0), s2)
    # scipy sqrtm of a singular product is itself approximate (~1e-8 relative here)
    assert fid_from_features(x, y, method="lowrank") == pytest.approx(pytorch_fid_value, rel=1e-6)
    assert fid_from_features(x, y) == pytest.approx(reference_fid(x, y), abs=1e-6)


@pytest.mark.parametrize("n_fake", [5, 40])  # fewer / more images than dimensions
def test_fid_against_stored_statistics_matches_scipy(n_fake):
    x, y = gaussian_sets(50, n_fake, 12, seed=12)
    value = fid_stats_vs_features(x.mean(0), np.cov(x, rowvar=False), y)
    assert value == pytest.approx(reference_fid(x, y), rel=1e-7, abs=1e-8)
    with pytest.raises(MetricError, match="different networks"):
        fid_stats_vs_features(x.mean(0)[:3], np.cov(x, rowvar=False), y)


def test_identical_sets_have_zero_fid_and_shift_adds_squared_norm():
    x, _ = gaussian_sets(200, 10, 8, seed=1)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = np.arange(8) * 0.1
    assert fid_from_features(x, x + shift) == pytest.approx(float(shift @ shift), abs=1e-6)


def test_singular_product_uses_eps_offset_like_pytorch_fid():
    # s1 @ s2 is a nilpotent Jordan block: scipy's sqrtm returns inf, so pytorch-fid's eps offset applies.
    s1 = np.array([[0.0, 1.0], [0.0, 0.0]])
    s2 = np.eye(2)
    with pytest.warns(linalg.LinAlgWarning):
        assert not np.isfinite(linalg.sqrtm(s1 @ s2)).all()
    mu = np.zeros(2)
    eps = 1e-6
    off = np.eye(2) * eps
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm((s1 + off) @ (s2 + off)).real)
    value = frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(value)
    assert value == pytest.approx(expected, abs=1e-9)


def test_nan_features_are_a_clear_error():
    x, y = gaussian_sets(20, 20, 4, seed=2)
    y[3, 1] = np.nan
    with pytest.raises(MetricError, match="NaN/inf"):
        fid_from_features(x, y)
    with pytest.raises(MetricError, match="NaN/inf"):
        kid(x, y)


def test_one_image_is_refused():
    x, y = gaussian_sets(20, 1, 4, seed=3)
    with pytest.raises(MetricError, match="at least 2"):
        fid_from_features(x, y)


def test_small_sets_warn_that_fid_is_biased():
    notes = fid_warnings(28, 100)
    assert any("2048" in n and "biased" in n for n in notes)
    assert any("28" in n for n in notes)
    assert fid_warnings(5000, 5000) == []


def brute_force_mmd2(x, y):
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_kid_equals_brute_force_unbiased_mmd_when_subsets_are_the_sets():
    x, y = gaussian_sets(12, 12, 5, seed=4)
    result = kid(x, y, n_subsets=3, subset_size=50)
    assert result.subset_size == 12
    assert result.mean == pytest.approx(brute_force_mmd2(x, y), rel=1e-10)
    assert result.std == pytest.approx(0.0, abs=1e-12)
    assert any("reduced" in w for w in result.warnings)
    assert any("std is 0" in w for w in result.warnings)


def test_kid_subsets_are_brute_force_mmd_of_random_subsets():
    x, y = gaussian_sets(30, 25, 4, seed=5)
    result = kid(x, y, n_subsets=4, subset_size=10, seed=7)
    rng = np.random.default_rng(7)
    values = []
    for _ in range(4):  # same draw order as documented: real subset, then generated subset
        xi = x[rng.choice(30, 10, replace=False)]
        yi = y[rng.choice(25, 10, replace=False)]
        values.append(brute_force_mmd2(xi, yi))
    assert result.mean == pytest.approx(np.mean(values), rel=1e-10)
    assert result.std == pytest.approx(np.std(values), rel=1e-8)


def test_kid_is_unbiased_near_zero_for_same_distribution():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(400, 6)), rng.normal(size=(400, 6))
    same = kid(x, y, n_subsets=20, subset_size=100)
    different = kid(x, y + 1.0, n_subsets=20, subset_size=100)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert different.mean > 10 * max(abs(same.mean), same.std)


def test_bootstrap_ci_contains_point_estimate_and_narrows_with_more_samples():
    x, y = gaussian_sets(60, 60, 4, seed=8)
    point = fid_from_features(x, y)
    ci = fid_bootstrap_ci(x, y, n_boot=200, seed=0, point=point)
    assert ci["low"] <= point <= ci["high"]
    xb, yb = gaussian_sets(600, 600, 4, seed=8)
    wide, narrow = ci["high"] - ci["low"], 0
    ci_big = fid_bootstrap_ci(xb, yb, n_boot=200, seed=0)
    narrow = ci_big["high"] - ci_big["low"]
    assert narrow < wide / 2


def test_bootstrap_ci_covers_expected_fid_at_that_sample_size():
    """Coverage check against Monte Carlo: the CI is for the FID of another draw of the same size."""
    n, trials = 40, 30
    rng = np.random.default_rng(9)
    a = rng.normal(size=(3, 3)) / 2

    def draw(r):
        return r.normal(size=(n, 3)) @ a, r.normal(size=(n, 3)) @ a + np.array([0.8, 0.0, -0.4])

    expected = np.mean([reference_fid(*draw(rng)) for _ in range(400)])
    covered = 0
    for t in range(trials):
        x, y = draw(rng)
        ci = fid_bootstrap_ci(x, y, n_boot=100, seed=t)
        covered += ci["low"] <= expected <= ci["high"]
    assert covered / trials >= 0.8
