"""Evaluation: FID / KID with the standard FID Inception, CLIP score, WD14 tag adherence, HTML reports.

Heavy dependencies (torch, transformers, matplotlib) load only when a name that needs them is used
(`animegen.core.lazy`).
"""

from animegen.core.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "metrics": ("FeatureStats", "KIDResult", "MetricError", "fid_bootstrap_ci", "fid_from_features",
                "frechet_distance", "kid"),
    "run": ("compare", "run_eval"),
})
