"""Evaluation: FID / KID with the standard FID Inception, CLIP score, WD14 tag adherence, HTML reports.

Heavy dependencies (torch, transformers, matplotlib) load only when a function needs them.
"""

from __future__ import annotations

from animegen.evaluate.metrics import (
    FeatureStats,
    KIDResult,
    MetricError,
    fid_bootstrap_ci,
    fid_from_features,
    frechet_distance,
    kid,
)

__all__ = [
    "FeatureStats", "KIDResult", "MetricError", "compare", "fid_bootstrap_ci", "fid_from_features",
    "frechet_distance", "kid", "run_eval",
]


def run_eval(*args, **kwargs):
    """See `animegen.evaluate.run.run_eval`."""
    from animegen.evaluate.run import run_eval as _run_eval

    return _run_eval(*args, **kwargs)


def compare(*args, **kwargs):
    """See `animegen.evaluate.run.compare`."""
    from animegen.evaluate.run import compare as _compare

    return _compare(*args, **kwargs)
