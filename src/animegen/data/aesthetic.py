"""`animegen data score`: LAION "improved aesthetic predictor" scores, a min-score filter and score tags.

The predictor is an MLP (1024-128-64-16-1 with dropouts; state-dict keys `layers.0.weight` ...) over the
L2-normalised CLIP ViT-L/14 image embedding; it outputs roughly 1..10 (AVA ratings). Waifu Diffusion 1.4
kept images scoring >= 6.0. Aesthetic tags come from absolute cut-offs, quality tags from percentiles
within the dataset (as Animagine XL does), both configurable.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from animegen.core.files import read_weights
from animegen.data.batching import run_batched
from animegen.data.manifest import STATUS_FILTERED, STATUS_OK, Manifest, ManifestRow

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
PREDICTOR_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
_FILTER_PREFIX = "aesthetic score"


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head; layer sizes are read from the state dict when loading."""

    def __init__(self, input_size: int = 768, hidden: Sequence[int] = (1024, 128, 64, 16)):
        super().__init__()
        h1, h2, h3, h4 = hidden
        self.layers = nn.Sequential(
            nn.Linear(input_size, h1), nn.Dropout(0.2),
            nn.Linear(h1, h2), nn.Dropout(0.2),
            nn.Linear(h2, h3), nn.Dropout(0.1),
            nn.Linear(h3, h4),
            nn.Linear(h4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> AestheticMLP:
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
        try:
            dims = [sd[f"layers.{i}.weight"].shape for i in (0, 2, 4, 6, 7)]
        except KeyError as e:
            raise ValueError(f"not an improved-aesthetic-predictor state dict: missing {e}") from None
        mlp = cls(input_size=dims[0][1], hidden=[d[0] for d in dims[:4]])
        mlp.load_state_dict(sd, strict=True)
        return mlp.eval()


def load_predictor(path: str | Path) -> AestheticMLP:
    """The MLP from a `.safetensors` / `.pth` file (or a folder holding exactly one such file)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.suffix in PREDICTOR_SUFFIXES)
        if len(found) != 1:
            raise FileNotFoundError(f"{p}: expected one predictor file ({'/'.join(PREDICTOR_SUFFIXES)}), "
                                    f"found {[f.name for f in found]}")
        p = found[0]
    if not p.is_file():
        raise FileNotFoundError(f"aesthetic predictor {p} not found (e.g. sac+logos+ava1-l14-linearMSE.pth)")
    # the published predictors are .pth files: read, as every pickle, weights-only
    sd, _ = read_weights(p, allow_pickle=True)
    return AestheticMLP.from_state_dict(sd)


class AestheticScorer:
    """CLIP image embedding -> L2 normalise -> MLP."""

    def __init__(self, clip_model, processor, mlp: AestheticMLP, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        proj = clip_model.config.projection_dim
        in_features = mlp.layers[0].in_features
        if proj != in_features:
            raise ValueError(f"CLIP embedding size {proj} does not match the predictor input {in_features}; "
                             "use the CLIP model the predictor was trained on (ViT-L/14 for the LAION one)")
        self.device, self.dtype = torch.device(device), dtype
        self.clip = clip_model.to(self.device, dtype).eval()
        self.processor = processor
        self.mlp = mlp.to(self.device).float().eval()

    @classmethod
    def from_pretrained(cls, predictor: str | Path, clip: str | Path = DEFAULT_CLIP, *,
                        device: str | None = None) -> AestheticScorer:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        mlp = load_predictor(predictor)  # first: a wrong path fails before the big CLIP load
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(clip))
            processor = CLIPImageProcessor.from_pretrained(str(clip))
        except OSError as e:
            raise FileNotFoundError(f"cannot load the CLIP model {clip!r} ({e}); pass --clip with a local "
                                    "folder of openai/clip-vit-large-patch14") from None
        return cls(model, processor, mlp, device=device, dtype=dtype)

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        emb = self.clip(pixel_values=pixels.to(self.device, self.dtype)).image_embeds.float()
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.inference_mode()
    def score(self, images: Sequence[Image.Image]) -> list[float]:
        if not images:
            return []
        return self.mlp(self.embed(images)).squeeze(-1).cpu().tolist()


@dataclass
class ScoreTagConfig:
    """Cut-offs (TOML table `[score]` with the same key names).

    aesthetic_cutoffs: tag -> minimum score; an image gets the highest tag it reaches, else the lowest tag.
    quality_percentiles: tag -> the image's percentile within the dataset must be above this.
    """

    aesthetic_cutoffs: dict[str, float] = field(default_factory=lambda: {
        "very aesthetic": 6.5, "aesthetic": 5.5, "displeasing": 4.5, "very displeasing": 0.0})
    quality_percentiles: dict[str, float] = field(default_factory=lambda: {
        "masterpiece": 95, "best quality": 85, "great quality": 75, "good quality": 50,
        "normal quality": 25, "low quality": 10, "worst quality": 0})

    @classmethod
    def from_toml(cls, path: str | Path) -> ScoreTagConfig:
        with open(path, "rb") as f:
            data = tomllib.load(f)
        table = data.get("score", data)
        unknown = set(table) - {"aesthetic_cutoffs", "quality_percentiles"}
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; "
                             "valid: aesthetic_cutoffs, quality_percentiles")
        cfg = cls()
        for key in ("aesthetic_cutoffs", "quality_percentiles"):
            if key in table:
                setattr(cfg, key, {str(k): float(v) for k, v in table[key].items()})
        return cfg


def aesthetic_tag(score: float, cutoffs: Mapping[str, float]) -> str:
    """Highest tag whose cut-off the score reaches; below every cut-off -> the lowest tag."""
    ordered = sorted(cutoffs.items(), key=lambda kv: -kv[1])
    for tag, cut in ordered:
        if score >= cut:
            return tag
    return ordered[-1][0]


def quality_tags(scores: Sequence[float], percentiles: Mapping[str, float]) -> list[str]:
    """Quality tag per score by its percentile in `scores` (share of scores <= it, in %)."""
    from scipy.stats import rankdata

    if not len(scores):
        return []
    pct = rankdata(np.asarray(scores, dtype=np.float64), method="max") / len(scores) * 100
    ordered = sorted(percentiles.items(), key=lambda kv: -kv[1])
    out = []
    for p in pct:
        tag = next((t for t, cut in ordered if p > cut), ordered[-1][0])
        out.append(tag)
    return out


def _is_score_filtered(row: ManifestRow) -> bool:
    return row.status == STATUS_FILTERED and (row.reason or "").startswith(_FILTER_PREFIX)


@dataclass
class ScoreReport:
    scored: int
    skipped: int
    failed: int
    filtered: int
    kept: int


def apply_score_filter_and_tags(manifest: Manifest, min_score: float | None, config: ScoreTagConfig) -> int:
    """(Re)apply `--min-score` and the aesthetic/quality tags to every scored row; returns #filtered."""
    scored = [r for r in manifest if r.aesthetic_score is not None and (r.ok or _is_score_filtered(r))]
    changed: set[str] = set()
    for r in scored:
        before = (r.status, r.reason, r.aesthetic_tag, r.quality_tag)
        if min_score is not None and r.aesthetic_score < min_score:
            r.status = STATUS_FILTERED
            r.reason = f"{_FILTER_PREFIX} {r.aesthetic_score:.2f} < --min-score {min_score:g}"
            r.quality_tag = None
        elif _is_score_filtered(r):
            r.status, r.reason = STATUS_OK, None
        r.aesthetic_tag = aesthetic_tag(r.aesthetic_score, config.aesthetic_cutoffs)
        if (r.status, r.reason, r.aesthetic_tag, r.quality_tag) != before:
            changed.add(r.path)
    kept = [r for r in scored if r.ok]
    for r, q in zip(kept, quality_tags([r.aesthetic_score for r in kept], config.quality_percentiles)):
        if r.quality_tag != q:
            r.quality_tag = q
            changed.add(r.path)
    for r in scored:
        if r.path in changed:
            r.caption = None if r.ok else r.caption  # quality/aesthetic words are part of the caption
            manifest.put(r)
    return sum(1 for r in scored if not r.ok)


def apply_score(row: ManifestRow, score: float) -> None:
    """Record one predictor output (both engines): rounded to 4 places; a NaN/inf score is no score."""
    row.aesthetic_score = round(float(score), 4) if math.isfinite(score) else None


def score_dataset(
    dataset: str | Path,
    scorer: AestheticScorer,
    *,
    batch_size: int = 16,
    min_score: float | None = None,
    config: ScoreTagConfig | None = None,
    force: bool = False,
    progress: bool = True,
) -> ScoreReport:
    """Score unscored rows, then filter by `min_score` and assign aesthetic/quality tags to all scored rows."""
    config = config or ScoreTagConfig()
    with Manifest(dataset) as manifest:
        candidates = [r for r in manifest if r.ok or _is_score_filtered(r)]
        todo = [r for r in candidates if force or r.aesthetic_score is None]

        def work(rows, images):
            for row, s in zip(rows, scorer.score(images)):
                apply_score(row, s)

        done, failed = run_batched(manifest, todo, batch_size, work, desc="score", progress=progress)
        filtered = apply_score_filter_and_tags(manifest, min_score, config)
        kept = len(manifest.ok_rows())
    return ScoreReport(scored=done, skipped=len(candidates) - len(todo), failed=failed, filtered=filtered,
                       kept=kept)
