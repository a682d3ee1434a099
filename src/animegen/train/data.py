"""Training data: kohya folders, `animegen data` manifests and WebDataset shards; aspect-ratio buckets;
a deterministic batch order.

Determinism is the point of the design: the batch sequence is a pure function of (seed, epoch), and
per-sample randomness (flip, crop, caption line/wildcards/shuffle/dropout) of (seed, step, position in the global
batch). That makes `--resume` exact and lets N processes split one global batch and see the same
samples one process would.

Captions and repeats follow kohya sd-scripts' DreamBooth folders: `N_name/` repeats its images N times, an
image's caption is the first `img<caption_extension>` found (`.txt`, then `.caption`, by default), and an image
without one trains with the class token `name`. Unlike kohya, an empty caption file also takes the class token
(kohya stops with an assertion). An item's `repeats` is its expected showings per epoch: the folder's N, or a
manifest row's exposure (`animegen.data.balance.exposure`: source repeats x weight, applied once; 0 = never),
times the dataset's own `repeats * weight`. `TrainData.summary()` is what the trainer prints before step 1.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from animegen.core.errors import AnimegenError
from animegen.core.files import IMAGE_EXTENSIONS, is_image_file
from animegen.core.seeds import derive_rng, derive_unit
from animegen.data.sidecar import kohya_folder
from animegen.train.config import DataSection, DatasetEntry

log = logging.getLogger(__name__)


class DataError(AnimegenError):
    """A dataset that cannot be read; the message names the path and what to do."""


@dataclass
class Item:
    """One training image: where it is, its caption candidates and how often it is shown per epoch."""

    source: str  # a file path, or "tarfile::member" for WebDataset shards
    captions: list[str]
    repeats: float
    size: tuple[int, int] = (0, 0)  # (width, height)
    bucket: tuple[int, int] = (0, 0)
    dataset: int = 0
    is_reg: bool = False  # from a regularisation (prior-preservation) dataset
    caption_found: str = "ok"  # what the reader found: "ok", "missing" (no caption) or "empty" (blank)
    class_token: bool = False  # the caption is the `N_name` folder's class token (none was found)

    def read_bytes(self) -> bytes:
        if "::" in self.source:
            tar, member = self.source.split("::", 1)
            with tarfile.open(tar) as tf:
                f = tf.extractfile(member)
                if f is None:
                    raise DataError(f"{self.source}: member missing from shard")
                return f.read()
        return Path(self.source).read_bytes()

    def content_hash(self) -> str:
        return hashlib.sha256(self.read_bytes()).hexdigest()[:32]


def open_item_image(item: Item) -> Image.Image:
    """RGB image of an item, through the data helper's validated loader when it is available."""
    if "::" not in item.source:
        from animegen.data.image_io import open_image

        return open_image(item.source)
    img = Image.open(io.BytesIO(item.read_bytes()))
    img.seek(0)
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


# ---------------------------------------------------------------- readers


def _read_caption_file(img: Path, extensions: list[str]) -> str | None:
    """The text of the first `img<ext>` that exists (stripped), or None when there is none."""
    for ext in extensions:
        cap_file = img.with_suffix(ext)
        if cap_file.is_file():
            try:
                return cap_file.read_text(encoding="utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"{cap_file}: not UTF-8 text; save the caption as UTF-8") from None
    return None


def _read_kohya(root: Path, entry: DatasetEntry, index: int) -> list[Item]:
    """kohya layout: `root/N_name/img.png` + `img.txt`; N is the repeat count, `name` the class token
    (kohya: the folder name after the first `_`). Images directly in `root` are N=1 without a class token."""
    folders: list[tuple[Path, int, str]] = []
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    for sub in subdirs:
        if (repeat := kohya_folder(sub.name)) is not None:
            folders.append((sub, *repeat))
    if any(is_image_file(p) for p in root.iterdir()):
        folders.append((root, 1, ""))
    if not folders:
        raise DataError(f"{root}: no images and no `N_name` repeat folders (e.g. `10_mychar/`) found")
    items: list[Item] = []
    for folder, n, class_token in folders:
        for img in sorted(folder.iterdir()):
            if not is_image_file(img):
                continue
            text = _read_caption_file(img, entry.caption_extension)
            item = Item(str(img), [text or class_token], n * entry.repeats * entry.weight, dataset=index,
                        caption_found="missing" if text is None else "empty" if not text else "ok",
                        class_token=not text and bool(class_token))
            items.append(item)
    return items


def _read_manifest(path: Path, entry: DatasetEntry, index: int) -> list[Item]:
    """An `animegen data` manifest (`manifest.jsonl`, see `animegen.data.manifest`): rows with status "ok"
    train; the row's exposure (`animegen.data.balance.exposure`: its `repeats`, else `source_repeats * weight`;
    0 = never)
    multiplies the dataset's `repeats * weight`.
    A list column (e.g. `tags`) joins to a comma-separated caption. A row with none of the configured
    columns gets the caption `animegen data export` would write for it (caption, else tags, else sidecar),
    else, as in kohya, the class token of the `N_name` folder it was ingested from."""
    from animegen.data.balance import exposure
    from animegen.data.export import row_caption
    from animegen.data.manifest import MANIFEST_NAME, read_rows

    if path.is_dir():
        path = path / MANIFEST_NAME
    items: list[Item] = []
    for row in read_rows(path).values():
        if not row.ok:
            continue
        data = row.to_dict()
        img_path = Path(row.path) if Path(row.path).is_absolute() else path.parent / row.path
        captions = []
        for col in entry.caption_columns:
            value = data.get(col)
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            if value:
                captions.append(str(value).strip())
        fallback = "" if captions else row_caption(row)
        token = not captions and not fallback and bool(row.class_token)
        items.append(Item(str(img_path), captions or [fallback or (row.class_token if token else "")],
                          entry.repeats * entry.weight * exposure(row), dataset=index,
                          caption_found="ok" if captions or fallback else "missing", class_token=token))
    return items


def _read_webdataset(path: Path, entry: DatasetEntry, index: int) -> list[Item]:
    """WebDataset shards (`*.tar`): members grouped by key; image + `.txt` or `.json` caption. Copies of one
    image (`animegen data export` writes a row once per repeat, same json `sha256`) are one item whose
    repeats count the copies: one latent, one validation-split decision."""
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not shards:
        raise DataError(f"{path}: no .tar shards found")
    items: list[Item] = []
    by_sha: dict[str, Item] = {}
    for shard in shards:
        with tarfile.open(shard) as tf:
            for key, g, img_ext, meta in tar_samples(tf):
                captions = []
                if "txt" in g:
                    captions.append(tf.extractfile(g["txt"]).read().decode("utf-8").strip())
                else:
                    for col in entry.caption_columns:
                        if meta.get(col):
                            v = meta[col]
                            captions.append(", ".join(v) if isinstance(v, list) else str(v))
                sha = meta.get("sha256")
                if sha and sha in by_sha:
                    by_sha[sha].repeats += entry.repeats * entry.weight
                    continue
                found = "missing" if not captions else "ok" if captions[0] else "empty"
                item = Item(f"{shard}::{g[img_ext].name}", captions or [""], entry.repeats * entry.weight,
                            dataset=index, caption_found=found)
                items.append(item)
                if sha:
                    by_sha[sha] = item
    return items


def tar_samples(tf: tarfile.TarFile):
    """A WebDataset tar's samples in key order: (key, {extension: member}, image extension, json metadata),
    members grouped by the name before the first dot; samples without an image are skipped."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    for m in tf.getmembers():
        if m.isfile():
            key, _, ext = m.name.partition(".")
            groups.setdefault(key, {})[ext.lower()] = m
    for key in sorted(groups):
        g = groups[key]
        img_ext = next((e for e in g if "." + e in IMAGE_EXTENSIONS), None)
        if img_ext is None:
            continue
        meta = json.loads(tf.extractfile(g["json"]).read()) if "json" in g else {}
        yield key, g, img_ext, meta if isinstance(meta, dict) else {}


def dataset_kind(entry: DatasetEntry) -> str:
    """`entry.kind`, with "auto" resolved from what is at the path."""
    path = Path(entry.path)
    if entry.kind != "auto":
        return entry.kind
    if (path.is_file() and path.suffix in (".jsonl", ".json")) or (path / "manifest.jsonl").is_file():
        return "manifest"
    if path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar"))):
        return "webdataset"
    return "kohya"


def read_dataset(entry: DatasetEntry, index: int = 0) -> list[Item]:
    """All items of one configured dataset, with their image sizes read from the headers."""
    path = Path(entry.path)
    if not path.exists():
        raise DataError(f"data.datasets[{index}].path: {str(path)!r} does not exist")
    kind = dataset_kind(entry)
    reader = {"kohya": _read_kohya, "manifest": _read_manifest, "webdataset": _read_webdataset}[kind]
    items = reader(path, entry, index)
    if not items:
        raise DataError(f"data.datasets[{index}].path: {str(path)!r} holds no images")
    for item in items:
        item.is_reg = entry.is_reg
        try:
            with Image.open(io.BytesIO(item.read_bytes()) if "::" in item.source else item.source) as im:
                item.size = _oriented_size(im)
        except (OSError, ValueError) as exc:
            raise DataError(f"{item.source}: cannot read image ({exc})") from None
    return items


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """Header size after EXIF orientation (orientations 5-8 swap width and height), as open_image sees it."""
    w, h = im.size
    return (h, w) if im.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)


# ---------------------------------------------------------------- buckets


def make_buckets(max_area: int, step: int = 64, min_side: int = 256, max_side: int = 2048) -> list[tuple[int, int]]:
    """All (w, h), multiples of `step`, with w*h <= max_area and each side as large as the area allows."""
    buckets: set[tuple[int, int]] = set()
    w = min_side
    while w <= max_side:
        h = min(max_side, (max_area // w) // step * step)
        if h >= min_side:
            buckets.add((w, h))
            buckets.add((h, w))
        w += step
    side = math.isqrt(max_area) // step * step
    buckets.add((side, side))
    return sorted(buckets)


def assign_bucket(size: tuple[int, int], buckets: list[tuple[int, int]], *, no_upscale: bool = False,
                  max_area: int = 0, step: int = 64) -> tuple[int, int]:
    """The bucket of nearest aspect ratio (log-ratio distance). With `no_upscale`, an image smaller than
    `max_area` gets its own bucket: its size rounded down to `step`, so it is never enlarged."""
    w, h = size
    if no_upscale and w * h <= max_area:
        return max(step, w // step * step), max(step, h // step * step)
    target = math.log(w / h)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))


def resize_to_bucket(img: Image.Image, bucket: tuple[int, int], rng: random.Random | None,
                     flip: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """Scale to cover the bucket, crop (centre, or random when `rng` is given), flip; -> CHW in [-1, 1]
    and the crop's (top, left) in resized pixels (SDXL's crop conditioning)."""
    bw, bh = bucket
    w, h = img.size
    scale = max(bw / w, bh / h)
    nw, nh = max(bw, round(w * scale)), max(bh, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    if rng is None:
        left, top = (nw - bw) // 2, (nh - bh) // 2
    else:
        left, top = rng.randint(0, nw - bw), rng.randint(0, nh - bh)
    img = img.crop((left, top, left + bw, top + bh))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), (top, left)


# ---------------------------------------------------------------- the whole data set


def _relative_source(source: str, dataset_path: str) -> str:
    root = Path(dataset_path)
    root = root.parent if root.is_file() else root
    try:
        return Path(source).relative_to(root).as_posix()
    except ValueError:
        return source


def step_rng(seed: int, step: int, slot: int) -> random.Random:
    """Per-sample randomness: depends only on the run seed, the step and the sample's global slot."""
    return derive_rng(seed, step, slot)


@dataclass
class TrainData:
    """Items split into train/validation, bucketed, with a deterministic global batch stream."""

    cfg: DataSection
    seed: int
    train: list[Item] = field(default_factory=list)
    val: list[Item] = field(default_factory=list)

    @classmethod
    def load(cls, cfg: DataSection, seed: int) -> TrainData:
        if not cfg.datasets:
            raise DataError("data.datasets is empty: add at least one [[data.datasets]] table with a `path`")
        items = [it for i, entry in enumerate(cfg.datasets) for it in read_dataset(entry, i)]
        max_area = cfg.resolution * cfg.resolution
        buckets = make_buckets(max_area, cfg.bucket_step, min(cfg.min_bucket_side, cfg.resolution),
                               max(cfg.max_bucket_side, cfg.resolution))
        for it in items:
            it.bucket = assign_bucket(it.size, buckets, no_upscale=cfg.bucket_no_upscale,
                                      max_area=max_area, step=cfg.bucket_step)
        data = cls(cfg, seed)
        for it in items:  # held-out split by a stable hash of the source relative to its dataset: independent
            # of listing order and of where the dataset folder lives
            key = _relative_source(it.source, cfg.datasets[it.dataset].path)
            held_out = not it.is_reg and derive_unit("split", seed, key) < cfg.validation_split
            (data.val if held_out else data.train).append(it)
        if not data.train:
            raise DataError("data.validation_split leaves no training images; lower it")
        return data

    def summary(self) -> DataSummary:
        """What each dataset brings (images, repeats, buckets, captions, tags): printed before step 1."""
        return summarize(self.cfg.datasets, self.train, self.val)

    def epoch_batches(self, epoch: int, batch_size: int) -> list[list[int]]:
        """Global batches (item indices) of one epoch: each item `repeats` times (fractional part drawn),
        shuffled within its bucket, chunked, short chunks filled from the same bucket, batches shuffled."""
        rng = derive_rng("epoch", self.seed, epoch)
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for i, it in enumerate(self.train):
            n = int(it.repeats) + (1 if rng.random() < it.repeats - int(it.repeats) else 0)
            by_bucket.setdefault(it.bucket, []).extend([i] * n)
        batches: list[list[int]] = []
        for bucket in sorted(by_bucket):
            idx = by_bucket[bucket]
            if not idx:
                continue
            rng.shuffle(idx)
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                k = 0
                while len(chunk) < batch_size:
                    chunk.append(idx[k % len(idx)])
                    k += 1
                batches.append(chunk)
        rng.shuffle(batches)
        return batches

    def batch_stream(self, batch_size: int, start_step: int = 0) -> Iterator[tuple[int, int, list[int]]]:
        """(step, epoch, global batch) forever, starting at `start_step` (earlier batches are skipped by
        index arithmetic only, so resuming costs no image reads)."""
        step, epoch = 0, 0
        while True:
            batches = self.epoch_batches(epoch, batch_size)
            if not batches:
                raise DataError("no training batches: every dataset has repeats * weight < 1")
            if step + len(batches) <= start_step:
                step += len(batches)
            else:
                for b in batches:
                    if step >= start_step:
                        yield step, epoch, b
                    step += 1
            epoch += 1


# ---------------------------------------------------------------- the summary before step 1


@dataclass
class DatasetSummary:
    """One configured dataset as training uses it. Counts are over all its images (training and held out);
    `images_x_repeats` is the training images' showings per epoch (kohya's "images * repeats")."""

    index: int
    path: str
    kind: str
    is_reg: bool
    images: int
    held_out: int
    repeats: dict[float, int]  # repeats per image -> images with that many
    images_x_repeats: float
    buckets: dict[str, int]  # "WxH" -> images
    captions_missing: int  # no caption file / column / member
    captions_empty: int  # a caption that is blank
    captions_from_class_token: int  # of those, given the `N_name` folder's class token
    captions_final_empty: int  # train with "" after every fallback
    top_tags: list[tuple[str, int]]

    def format(self) -> str:
        repeats = ", ".join(f"{r:g} ({n} images)" for r, n in self.repeats.items())
        buckets = ", ".join(f"{b}: {n}" for b, n in self.buckets.items())
        tags = ", ".join(f"{t} {n}" for t, n in self.top_tags) or "none"
        held = f" ({self.held_out} held out)" if self.held_out else ""
        return (f"dataset {self.index}{' (reg)' if self.is_reg else ''} [{self.kind}] {self.path}: "
                f"{self.images} images{held}, images x repeats {self.images_x_repeats:g}\n"
                f"  repeats {repeats}; buckets {buckets}\n"
                f"  captions: {self.captions_missing} missing, {self.captions_empty} empty, "
                f"{self.captions_from_class_token} from the class token, {self.captions_final_empty} train empty\n"
                f"  top tags: {tags}")


@dataclass
class DataSummary:
    datasets: list[DatasetSummary]
    warnings: list[str]

    @property
    def images_x_repeats(self) -> float:
        """Training images x repeats outside regularisation sets: kohya's `ss_num_train_images`."""
        return sum(d.images_x_repeats for d in self.datasets if not d.is_reg)

    def format(self) -> str:
        return "\n".join(["training data:", *(d.format() for d in self.datasets)])

    def log(self) -> None:
        for w in self.warnings:
            log.warning(w)


TOP_TAGS = 10


def summarize(entries: list[DatasetEntry], train: list[Item], val: list[Item]) -> DataSummary:
    from collections import Counter

    from animegen.prompts.tags import split_tags

    held = {id(it) for it in val}
    out, warnings = [], []
    for i, entry in enumerate(entries):
        items = [it for it in train + val if it.dataset == i]
        trained = [it for it in items if id(it) not in held]
        tags = Counter(t for it in items for t in split_tags(it.captions[0].replace("\n", ",")))
        final_empty = sum(not it.captions[0] for it in items)
        d = DatasetSummary(
            i, entry.path, dataset_kind(entry), entry.is_reg, len(items), len(items) - len(trained),
            dict(sorted(Counter(float(it.repeats) for it in items).items(), reverse=True)),
            sum(it.repeats for it in trained),
            {f"{w}x{h}": n for (w, h), n in sorted(Counter(it.bucket for it in items).items())},
            sum(it.caption_found == "missing" for it in items), sum(it.caption_found == "empty" for it in items),
            sum(it.class_token for it in items), final_empty, tags.most_common(TOP_TAGS))
        out.append(d)
        where = f"data.datasets[{i}] ({entry.path})"
        if items and final_empty == len(items):
            warnings.append(
                f"{where}: every caption is empty ({d.captions_missing} images without a caption, "
                f"{d.captions_empty} blank): this trains no prompt at all. Write captions next to the images "
                f"(looked for {', '.join(entry.caption_extension)}), set caption_extension / caption_columns, or "
                "name kohya folders `N_token` to caption them with `token`")
        elif final_empty:
            warnings.append(f"{where}: {final_empty} of {len(items)} images train with an empty caption")
    return DataSummary(out, warnings)


_WILDCARD = re.compile(r"\{([^{}]+)\}")


def pick_caption_line(text: str, rng: random.Random) -> str:
    """A multi-line caption file is one alternative caption per line (kohya with wildcards on): one non-blank
    line, uniformly; a one-line caption is returned without a draw."""
    if "\n" not in text:
        return text
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return lines[rng.randrange(len(lines))] if len(lines) > 1 else (lines[0] if lines else "")


def expand_wildcards(text: str, rng: random.Random) -> str:
    """kohya's caption wildcards: each `{a|b|c}` becomes one of its options, uniformly, left to right;
    `{{` and `}}` are literal braces. No draw for a caption without one."""
    if "{" not in text:
        return text
    open_, close = "\x00", "\x01"
    text = text.replace("{{", open_).replace("}}", close)
    text = _WILDCARD.sub(lambda m: (opts := m.group(1).split("|"))[rng.randrange(len(opts))], text)
    return text.replace(open_, "{").replace(close, "}")


def make_caption(item: Item, cfg: DataSection, rng: random.Random) -> str:
    """One showing's caption, kohya's order: pick a candidate (mixed long/short captions), caption dropout,
    one line of a multi-line caption, wildcards, then the tags after the kept ones shuffled (shuffle_tags) and
    dropped (caption_tag_dropout_rate), then the prompt preset. All draws come from `rng`."""
    text = item.captions[rng.randrange(len(item.captions))] if len(item.captions) > 1 else item.captions[0]
    if cfg.caption_dropout and rng.random() < cfg.caption_dropout:
        return ""
    text = expand_wildcards(pick_caption_line(text, rng), rng)
    separator = cfg.keep_tokens_separator
    if cfg.shuffle_tags or cfg.caption_tag_dropout_rate or (separator and separator in text):
        from animegen.prompts.tags import shuffle_tags

        text = shuffle_tags(text, cfg.keep_tokens, rng, keep_tokens_separator=separator or None,
                            dropout=cfg.caption_tag_dropout_rate, shuffle=cfg.shuffle_tags)
    if cfg.caption_preset != "none":
        from animegen.prompts.presets import build_prompt

        text = build_prompt(cfg.caption_preset, text)
    return text
