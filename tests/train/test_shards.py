"""Shard index + streaming order (animegen.train.shards). References are written by the test itself: tar
shards built here with `tarfile`, sizes and byte contents known, the split/resume properties stated in
the module docstring."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image

from animegen.train.data import assign_bucket, make_buckets
from animegen.train.shards import ShardError, ShardIndex, partition_batches, split_shards, write_shard_index

SIZES = [(64, 64), (128, 64), (64, 128)]


def _write_shards(folder, n_shards=4, per_shard=6):
    folder.mkdir(parents=True, exist_ok=True)
    payloads = {}
    for s in range(n_shards):
        with tarfile.open(folder / f"shard-{s:06d}.tar", "w") as tf:
            for i in range(per_shard):
                key = f"s{s}_{i}"
                w, h = SIZES[(s + i) % 3]
                buf = io.BytesIO()
                Image.new("RGB", (w, h), (s * 40, i * 30, 7)).save(buf, format="PNG")
                meta = {"width": w, "height": h, "sha256": f"{key}sha"} if i % 2 == 0 else {}
                for ext, data in (("png", buf.getvalue()), ("txt", f"cap {key}".encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                payloads[key] = (buf.getvalue(), (w, h))
    return payloads


def _bucket_of():
    buckets = make_buckets(64 * 64, 64, 64, 128)
    return lambda s: assign_bucket((s.width, s.height), buckets)


def test_index_records_offsets_sizes_and_captions(tmp_path):
    payloads = _write_shards(tmp_path / "wds")
    write_shard_index(tmp_path / "wds")
    index = ShardIndex.load(tmp_path / "wds")
    assert len(index) == len(payloads)
    for samples in index.shards.values():
        for s in samples:
            data, size = payloads[s.key]
            assert s.read_bytes(index.folder) == data  # offset + length locate exactly the image bytes
            assert (s.width, s.height) == size  # from the json, or the header at index time when absent
            assert s.caption == f"cap {s.key}"


def test_split_is_disjoint_and_covering():
    shards = [f"shard-{i:06d}.tar" for i in range(7)]
    for readers in (1, 2, 3, 7):
        parts = [split_shards(shards, r, readers) for r in range(readers)]
        assert sorted(x for p in parts for x in p) == shards
    with pytest.raises(ShardError):
        split_shards(shards, 0, 8)


def test_stream_opens_no_image_covers_epoch_and_resumes_exactly(tmp_path, monkeypatch):
    payloads = _write_shards(tmp_path / "wds")
    write_shard_index(tmp_path / "wds")
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or pytest.fail("image opened"))
    index = ShardIndex.load(tmp_path / "wds")
    bucket_of = _bucket_of()
    seen = {}
    for reader in range(2):
        stream = partition_batches(index, 3, reader, 2, 2, bucket_of, buffer_size=4)
        batches = [next(stream) for _ in range(30)]
        epoch0 = [s.key for n, e, b in batches if e == 0 for s in b]
        seen[reader] = set(epoch0)
        for _, _, b in batches:
            assert len({bucket_of(s) for s in b}) == 1  # one bucket per batch, from metadata
        # resuming at any batch gives the same continuation (a pure function of the seed)
        for k in (1, 5, 17):
            resumed = partition_batches(index, 3, reader, 2, 2, bucket_of, buffer_size=4, start=k)
            assert [next(resumed) for _ in range(30 - k)] == batches[k:]
        # a seeded shuffle: another seed gives another order of the same samples
        other = partition_batches(index, 4, reader, 2, 2, bucket_of, buffer_size=4)
        assert [next(other) for _ in range(30)] != batches
    assert seen[0] | seen[1] == set(payloads) and not seen[0] & seen[1]
    assert not opened
