"""WD14-family ONNX taggers (SmilingWolf v2/v3: vit, convnext, swinv2, eva02) through onnxruntime.

A tagger folder (or hub repo) holds `model.onnx` and `selected_tags.csv` (tag_id,name,category,count;
category 9 = rating, 0 = general, 4 = character). Preprocessing matches the reference implementation
exactly, because the models were trained on it: composite alpha on white, pad to a square with white
(centred, floor division), bicubic resize to the model's input size, RGB -> BGR, float32 in 0..255, NHWC.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

RATING_CATEGORY = 9
GENERAL_CATEGORY = 0
CHARACTER_CATEGORY = 4
DEFAULT_GENERAL_THRESHOLD = 0.35
DEFAULT_CHARACTER_THRESHOLD = 0.85
TAGGER_FILES = ("model.onnx", "selected_tags.csv")


@dataclass
class TagResult:
    """Tagger output for one image; dicts are ordered most confident first."""

    rating: str
    general: dict[str, float]
    character: dict[str, float]
    ratings: dict[str, float] = field(default_factory=dict)

    @property
    def tags(self) -> list[str]:
        """Character tags first, then general tags (the order captions use)."""
        return list(self.character) + list(self.general)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """One image -> float32 HxWx3 BGR array in 0..255, exactly as the WD14 reference tagger prepares it."""
    if image.mode != "RGBA":
        image = image.convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    w, h = image.size
    side = max(w, h)
    padded = Image.new("RGB", (side, side), (255, 255, 255))
    padded.paste(image, ((side - w) // 2, (side - h) // 2))
    if side != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    arr = np.asarray(padded, dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1])


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut Thresholding (Largeron et al. 2012): split at the largest gap between sorted scores."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size < 2:
        return float(probs[0]) if probs.size else 1.0
    s = np.sort(probs)[::-1]
    gaps = s[:-1] - s[1:]
    t = int(gaps.argmax())
    return float((s[t] + s[t + 1]) / 2)


def _normalize(name: str) -> str:
    from animegen.prompts.tags import normalize_tag

    return normalize_tag(name)


def load_tag_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(normalised names, categories) from a `selected_tags.csv`."""
    names: list[str] = []
    cats: list[int] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"name", "category"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected tag_id,name,category,count")
        for row in reader:
            names.append(_normalize(row["name"]))
            cats.append(int(row["category"]))
    return names, np.asarray(cats, dtype=np.int64)


def resolve_tagger_files(path_or_hub_id: str | Path) -> tuple[Path, Path]:
    """Local folder with the two files, or a hub repo id (downloaded through the HF cache)."""
    p = Path(path_or_hub_id)
    if p.is_dir():
        files = [p / n for n in TAGGER_FILES]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"tagger folder {p} lacks {', '.join(missing)} (need {' + '.join(TAGGER_FILES)})")
        return files[0], files[1]
    if p.exists() or str(path_or_hub_id).count("/") != 1:
        raise FileNotFoundError(
            f"tagger {path_or_hub_id!r} is neither a folder with {' + '.join(TAGGER_FILES)} nor a hub id "
            "like SmilingWolf/wd-eva02-large-tagger-v3"
        )
    from huggingface_hub import hf_hub_download

    repo = str(path_or_hub_id)
    try:
        return Path(hf_hub_download(repo, TAGGER_FILES[0])), Path(hf_hub_download(repo, TAGGER_FILES[1]))
    except Exception as e:  # noqa: BLE001  (offline, unknown repo, gated ...: one message with the way out)
        raise FileNotFoundError(
            f"could not fetch tagger {repo!r} from the hub ({type(e).__name__}: {e}); "
            "download model.onnx + selected_tags.csv into a folder and pass that folder"
        ) from None


class WD14Tagger:
    """Batched WD14 tagging; thresholds and MCut as in SmilingWolf's reference tagger."""

    def __init__(self, model_path: str | Path, tags_csv: str | Path, *, device: str | None = None,
                 name: str | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        want_cuda = device is None or str(device).startswith("cuda")
        providers = (["CUDAExecutionProvider"] if want_cuda and "CUDAExecutionProvider" in available else [])
        providers.append("CPUExecutionProvider")
        self.session = ort.InferenceSession(str(model_path), providers=providers)
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] != shape[2] or shape[3] != 3:
            raise ValueError(f"{model_path}: expected an NHWC square RGB input, got shape {shape}")
        self.input_name = inp.name
        self.size = int(shape[1])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.names, self.categories = load_tag_csv(tags_csv)
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.names):
            raise ValueError(f"{tags_csv} lists {len(self.names)} tags but the model predicts {n_out}")
        self.name = name or Path(model_path).parent.name
        self.providers = self.session.get_providers()

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, device: str | None = None) -> WD14Tagger:
        model, tags = resolve_tagger_files(path_or_hub_id)
        name = str(path_or_hub_id) if not Path(path_or_hub_id).is_dir() else Path(path_or_hub_id).name
        return cls(model, tags, device=device, name=name)

    def predict(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Raw probabilities, shape (len(images), n_tags)."""
        if not images:
            return np.zeros((0, len(self.names)), dtype=np.float32)
        batch = np.stack([preprocess(im, self.size) for im in images])
        if self.fixed_batch:
            outs = [self.session.run(None, {self.input_name: batch[i:i + self.fixed_batch]})[0]
                    for i in range(0, len(batch), self.fixed_batch)]
            return np.concatenate(outs)
        return self.session.run(None, {self.input_name: batch})[0]

    def tag(
        self,
        images: Sequence[Image.Image],
        *,
        general_threshold: float = DEFAULT_GENERAL_THRESHOLD,
        character_threshold: float = DEFAULT_CHARACTER_THRESHOLD,
        general_mcut: bool = False,
        character_mcut: bool = False,
        blacklist: Iterable[str] = (),
    ) -> list[TagResult]:
        probs = self.predict(images)
        return [self.decode(p, general_threshold=general_threshold, character_threshold=character_threshold,
                            general_mcut=general_mcut, character_mcut=character_mcut, blacklist=blacklist)
                for p in probs]

    def decode(
        self,
        probs: np.ndarray,
        *,
        general_threshold: float = DEFAULT_GENERAL_THRESHOLD,
        character_threshold: float = DEFAULT_CHARACTER_THRESHOLD,
        general_mcut: bool = False,
        character_mcut: bool = False,
        blacklist: Iterable[str] = (),
    ) -> TagResult:
        """One probability vector -> TagResult (thresholds, MCut, rating argmax, blacklist, sorting)."""
        return decode_predictions(probs, self.names, self.categories, general_threshold=general_threshold,
                                  character_threshold=character_threshold, general_mcut=general_mcut,
                                  character_mcut=character_mcut, blacklist=blacklist)


def decode_predictions(
    probs: np.ndarray,
    names: Sequence[str],
    categories: np.ndarray,
    *,
    general_threshold: float = DEFAULT_GENERAL_THRESHOLD,
    character_threshold: float = DEFAULT_CHARACTER_THRESHOLD,
    general_mcut: bool = False,
    character_mcut: bool = False,
    blacklist: Iterable[str] = (),
) -> TagResult:
    """Reference decoding: MCut replaces a threshold; the character MCut never goes below 0.15."""
    probs = np.asarray(probs, dtype=np.float64)
    categories = np.asarray(categories)
    banned = {_normalize(b.strip()) for b in blacklist if b.strip()}

    def pick(cat: int, threshold: float, mcut: bool, floor: float = 0.0) -> dict[str, float]:
        idx = np.flatnonzero(categories == cat)
        if idx.size == 0:
            return {}
        if mcut:
            threshold = max(floor, mcut_threshold(probs[idx]))
        chosen = [(names[i], float(probs[i])) for i in idx if probs[i] > threshold and names[i] not in banned]
        chosen.sort(key=lambda kv: -kv[1])
        return dict(chosen)

    rating_idx = np.flatnonzero(categories == RATING_CATEGORY)
    ratings = {names[i]: float(probs[i]) for i in rating_idx}
    rating = names[rating_idx[int(np.argmax(probs[rating_idx]))]] if rating_idx.size else ""
    return TagResult(
        rating=rating,
        general=pick(GENERAL_CATEGORY, general_threshold, general_mcut),
        character=pick(CHARACTER_CATEGORY, character_threshold, character_mcut, floor=0.15),
        ratings=ratings,
    )
