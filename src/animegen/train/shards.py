"""Streaming sharded training data: a shard index (`shards.json`) next to WebDataset tar shards, the split of
shards over readers, a seeded shuffle buffer and aspect-ratio buckets formed from index metadata alone.

Contract
- `write_shard_index(folder)` scans `folder/*.tar` (what `animegen data export --format webdataset` writes)
  once and stores, per sample: key, shard, image member, byte offset and length of the image data,
  width/height, caption (`txt`), sha256 and repeats (from the sample's `json`). Sizes come from the json
  (`width`/`height`, what ingest measured); only a sample without them has its image header read, at index
  time, never at train start. `ShardIndex.load(folder)` reads it back.
- `split_shards(shards, reader, readers)`: reader r of R takes shards r, r+R, r+2R, ... of the sorted list:
  every shard is read by exactly one reader (no overlap, no loss). The reader id is the global one,
  `(node_rank * procs_per_node + local_rank) * workers + worker`, i.e. the process index accelerate/torchrun
  gives times the worker count.
- `partition_batches(index, seed, reader, readers, ...)`: the reader's batches, forever: per epoch its shards in
  an order drawn from (seed, epoch, reader), samples read in shard order through a shuffle buffer of
  `buffer_size` (seeded from (seed, epoch, reader)), each sample put in the bucket `assign_bucket` gives its
  index size; a bucket that holds `batch_size` samples is emitted as a batch. At the end of the epoch the
  partial buckets are filled from their own samples (as `TrainData.epoch_batches` fills short chunks).
  The state at any batch is (epoch, samples consumed), a pure function of the seed: resuming at batch n
  replays the index metadata only (no image read), so a killed run resumes bit-identically without
  saving a data-loader state.

Why a small reader on tar byte offsets and not the `webdataset` library's pipeline: its shuffle and shard
split draw from per-worker RNGs that are not exposed, and it has no state to save or restore, so mid-epoch
resume would be approximate; reading at stored offsets makes every sample a seek + read (no header rescan,
unlike `Item.read_bytes` on `tar::member`), and the order is ours to define. Why WebDataset tar over MDS
(mosaicml-streaming): `animegen data export` already writes tar shards that any tool reads, and
mosaicml-streaming cannot be a dependency here (it pins old transformers/numpy).

Where we differ from kohya/webdataset: a sample exported N times (repeats) is N samples of the stream, as any
WebDataset reader would see it; there is no validation split on a shard dataset.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from animegen.core.errors import AnimegenError
from animegen.core.files import atomic_write
from animegen.core.seeds import derive_rng
from animegen.train.data import tar_samples

SHARD_INDEX = "shards.json"


class ShardError(AnimegenError):
    """A shard folder or index that cannot be used; the message names the path and the fix."""


@dataclass(frozen=True)
class ShardSample:
    """One sample as the index records it; `offset`/`length` locate the image bytes inside `shard`."""

    key: str
    shard: str
    member: str
    offset: int
    length: int
    width: int
    height: int
    caption: str
    sha256: str | None = None
    repeats: int = 1

    def read_bytes(self, folder: str | Path) -> bytes:
        """The image bytes: one seek and one read, no tar header scan."""
        with open(Path(folder) / self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.length)
        if len(data) != self.length:
            raise ShardError(f"{self.shard}: truncated at sample {self.key}; re-export the shards")
        return data


def _scan_shard(path: Path) -> list[ShardSample]:
    out: list[ShardSample] = []
    with tarfile.open(path) as tf:
        for key, g, img_ext, meta in tar_samples(tf):
            caption = tf.extractfile(g["txt"]).read().decode("utf-8").strip() if "txt" in g else ""
            img = g[img_ext]
            w, h = meta.get("width") or 0, meta.get("height") or 0
            if not (w and h):  # index time only: the trainer never opens an image to learn its size
                from PIL import Image

                with Image.open(io.BytesIO(tf.extractfile(img).read())) as im:
                    w, h = im.size
            out.append(ShardSample(key, path.name, img.name, img.offset_data, img.size, int(w), int(h),
                                   caption, meta.get("sha256"), int(meta.get("repeats") or 1)))
    return out


def write_shard_index(folder: str | Path) -> Path:
    """Scan `folder/*.tar` and write `folder/shards.json` (atomically); returns its path."""
    folder = Path(folder)
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise ShardError(f"{folder}: no .tar shards found; write them with `animegen data export --format webdataset`")
    index = {"version": 1, "shards": {p.name: [vars(s) for s in _scan_shard(p)] for p in shards}}
    path = folder / SHARD_INDEX
    atomic_write(path, json.dumps(index))
    return path


@dataclass
class ShardIndex:
    folder: Path
    shards: dict[str, list[ShardSample]]

    @classmethod
    def load(cls, folder: str | Path) -> ShardIndex:
        folder = Path(folder)
        path = folder / SHARD_INDEX
        if not path.is_file():
            raise ShardError(f"{path}: no shard index; run `python -c \"from animegen.train.shards import "
                             f"write_shard_index; write_shard_index('{folder}')\"`")
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(folder, {name: [ShardSample(**s) for s in samples] for name, samples in raw["shards"].items()})

    @property
    def names(self) -> list[str]:
        return sorted(self.shards)

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards.values())


def split_shards(shards: list[str], reader: int, readers: int) -> list[str]:
    """Reader `reader` of `readers` gets shards[reader::readers] of the sorted list (disjoint, covering)."""
    if not 0 <= reader < readers:
        raise ShardError(f"reader {reader} is outside 0..{readers - 1}")
    if len(shards) < readers:
        raise ShardError(f"{len(shards)} shards for {readers} readers (nodes x processes x workers): every reader "
                         "needs one; export with a smaller shard_max_count")
    return sorted(shards)[reader::readers]


def shuffle_buffer(samples: Iterator[ShardSample], size: int, rng) -> Iterator[ShardSample]:
    """Seeded shuffle buffer: fill `size` samples, then emit a uniformly drawn one per new sample
    (swapped with the last), then drain the rest in a drawn order. size <= 1: the input order."""
    buf: list[ShardSample] = []
    for s in samples:
        buf.append(s)
        if len(buf) >= max(size, 1):
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def epoch_stream(index: ShardIndex, seed: int, epoch: int, reader: int, readers: int,
                 buffer_size: int) -> Iterator[ShardSample]:
    """One epoch of a reader's samples: its shards in a seeded order, read sequentially, through the buffer."""
    rng = derive_rng("shards", seed, epoch, reader)
    mine = split_shards(index.names, reader, readers)
    rng.shuffle(mine)
    return shuffle_buffer((s for name in mine for s in index.shards[name]), buffer_size, rng)


def partition_batches(index: ShardIndex, seed: int, reader: int, readers: int, batch_size: int,
                      bucket_of, buffer_size: int = 1000,
                      start: int = 0) -> Iterator[tuple[int, int, list[ShardSample]]]:
    """(batch number, epoch, samples) of one reader forever, from batch `start` (earlier ones replayed on
    metadata only). `bucket_of(sample) -> (w, h)` decides the bucket from the index size."""
    n, epoch = 0, 0
    while True:
        pending: dict[tuple[int, int], list[ShardSample]] = {}
        seen: dict[tuple[int, int], list[ShardSample]] = {}
        emitted = False
        for s in epoch_stream(index, seed, epoch, reader, readers, buffer_size):
            b = bucket_of(s)
            pending.setdefault(b, []).append(s)
            seen.setdefault(b, []).append(s)
            if len(pending[b]) == batch_size:
                if n >= start:
                    yield n, epoch, pending.pop(b)
                else:
                    pending.pop(b)
                n, emitted = n + 1, True
        for b in sorted(pending):  # end of epoch: fill partial buckets from their own samples
            chunk, k = pending[b], 0
            while len(chunk) < batch_size:
                chunk.append(seen[b][k % len(seen[b])])
                k += 1
            if n >= start:
                yield n, epoch, chunk
            n, emitted = n + 1, True
        if not emitted:
            raise ShardError(f"{index.folder}: reader {reader} got no samples")
        epoch += 1
