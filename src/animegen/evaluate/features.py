"""Image folders -> Inception pool3 features, with pytorch-fid's preprocessing and a content-hash cache.

Two resize modes, always named in results because they give different numbers:
- `legacy`: pytorch-fid — RGB uint8 -> float [0, 1] -> bilinear resize to 299 (torch,
  align_corners=False) -> x*2-1. Numbers comparable with pytorch-fid's.
- `clean`: clean-fid's anti-aliased resize — PIL bicubic on each float channel, clipped to
  [0, 255] — then the same network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from animegen.core.files import IMAGE_EXTENSIONS, atomic_path, cache_root, is_image_file, sha256_file
from animegen.evaluate.inception import INPUT_SIZE
from animegen.evaluate.metrics import MetricError, check_features

MODES = ("legacy", "clean")
CACHE_VERSION = 1


@dataclass
class FeatureSet:
    """Features of one image set plus what is needed to say what they are."""

    features: np.ndarray
    paths: list[str]
    mode: str
    model_id: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False


def _open_image(path: Path) -> Image.Image:
    """Validated RGB image through the data package (EXIF transpose, alpha on white, first frame)."""
    from animegen.data.image_io import open_image

    return open_image(path)


def list_images(folder: str | Path) -> list[Path]:
    """All image files under `folder` (recursive, sorted, hidden folders skipped); clear error if none."""
    folder = Path(folder)
    if not folder.exists():
        raise MetricError(f"'{folder}' does not exist")
    if folder.is_file():
        raise MetricError(f"'{folder}' is a file; pass a folder of images")
    found = [p for p in sorted(folder.rglob("*"))
             if p.is_file() and is_image_file(p)
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if not found:
        raise MetricError(f"'{folder}' contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return found


def load_images(paths: Iterable[Path]) -> tuple[list[tuple[Path, Image.Image]], list[tuple[str, str]]]:
    """Open every image; unreadable files are returned as (path, reason) instead of raising."""
    ok, skipped = [], []
    for path in paths:
        try:
            ok.append((Path(path), _open_image(Path(path))))
        except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable"
            skipped.append((str(path), getattr(err, "reason", None) or f"{type(err).__name__}: {err}"))
    return ok, skipped


def preprocess(image: Image.Image, mode: str = "legacy") -> torch.Tensor:
    """One RGB image -> (3, 299, 299) float tensor in [0, 1] (the network scales to [-1, 1])."""
    if mode not in MODES:
        raise MetricError(f"unknown resize mode '{mode}'; use one of {', '.join(MODES)}")
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if mode == "clean":
        channels = []
        for c in range(3):
            chan = Image.fromarray(arr[:, :, c].astype(np.float32), mode="F")
            chan = chan.resize((INPUT_SIZE, INPUT_SIZE), resample=Image.Resampling.BICUBIC)
            channels.append(np.asarray(chan, dtype=np.float32).clip(0, 255))
        return torch.from_numpy(np.stack(channels, 0) / np.float32(255))
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)[0]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def extract_features(images: Sequence[Image.Image], model: torch.nn.Module, *, mode: str = "legacy",
                     batch_size: int = 50, device: str | torch.device | None = None,
                     progress: bool = True, desc: str = "Inception features",
                     loader: Callable[[object], Image.Image] | None = None) -> np.ndarray:
    """(N, 2048) float32 features of `images` (PIL images, or items `loader` turns into images)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise MetricError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = []
    with tqdm(total=len(images), desc=desc, disable=not progress, unit="img") as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = torch.stack([preprocess(loader(im) if loader else im, mode) for im in chunk])
            out.append(model(batch.to(device)).float().cpu().numpy())
            bar.update(len(chunk))
    if not out:
        raise MetricError("no images to compute features of")
    return np.concatenate(out, 0)


def content_hash(paths: Iterable[Path]) -> str:
    """SHA-256 over the sorted per-file content hashes: renames keep it, any pixel change breaks it."""
    digests = [sha256_file(path, cached=False) for path in paths]
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def default_cache_dir() -> Path:
    return cache_root() / "fid_stats"


def folder_features(folder: str | Path, model: torch.nn.Module, *, mode: str = "legacy",
                    batch_size: int = 50, cache_dir: str | Path | None = None, progress: bool = True,
                    min_images: int = 2) -> FeatureSet:
    """Features of every readable image in `folder`, cached in `cache_dir` when given.

    The cache key is the images' content hash + the network's weights id + the resize mode, so a
    changed image, other weights or the other mode never reuse stale statistics.
    """
    model_id = getattr(model, "weights_id", "unknown")
    paths = list_images(folder)
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(f"v{CACHE_VERSION}|{content_hash(paths)}|{model_id}|{mode}".encode()).hexdigest()
        cache_file = Path(cache_dir) / f"{key[:32]}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as data:
                feats = data["features"]
                skipped = [tuple(s.split("\t", 1)) for s in data["skipped"].tolist()]
                used = data["paths"].tolist()
            return FeatureSet(feats, used, mode, model_id, skipped, from_cache=True)
    loaded, skipped = load_images(paths)
    if len(loaded) < min_images:
        detail = f"; unreadable: {skipped[0][0]} ({skipped[0][1]})" if skipped else ""
        raise MetricError(f"'{folder}' has {len(loaded)} readable image(s); at least {min_images} are "
                          f"needed{detail}")
    feats = extract_features([im for _, im in loaded], model, mode=mode, batch_size=batch_size,
                             progress=progress, desc=f"features {Path(folder).name}")
    check_features(feats, str(folder))
    used = [str(p) for p, _ in loaded]
    if cache_file is not None:
        feats64 = feats.astype(np.float64)
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no suffix
            np.savez(f, features=feats, mu=feats64.mean(0), sigma=np.cov(feats64, rowvar=False),
                     paths=np.array(used), skipped=np.array(["\t".join(s) for s in skipped], dtype=str),
                     mode=mode, model_id=model_id)
    return FeatureSet(feats, used, mode, model_id, skipped)
