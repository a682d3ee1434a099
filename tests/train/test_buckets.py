"""Aspect-ratio buckets and the deterministic batch stream."""

from __future__ import annotations

import math

from train_helpers import write_kohya

from animegen.train.config import DataSection, DatasetEntry
from animegen.train.data import TrainData, assign_bucket, make_buckets


def test_buckets_respect_area_and_step():
    buckets = make_buckets(512 * 512, 64, 256, 1024)
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and min(w, h) >= 256


def test_each_image_goes_to_the_nearest_aspect_ratio():
    buckets = make_buckets(512 * 512, 64, 256, 1024)
    for size in [(1000, 1000), (1920, 1080), (600, 1400), (3000, 1000)]:
        want = min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - math.log(size[0] / size[1])))
        got = assign_bucket(size, buckets)
        assert math.isclose(got[0] / got[1], want[0] / want[1])
    assert assign_bucket((1920, 1080), buckets) == (640, 384)  # 1.78 -> 1.67 (next: 1.4 or 2.2)


def test_no_upscale_keeps_small_images_small():
    buckets = make_buckets(512 * 512, 64, 256, 1024)
    assert assign_bucket((300, 200), buckets, no_upscale=True, max_area=512 * 512) == (256, 192)
    assert assign_bucket((300, 200), buckets) == (640, 384)  # enlarged otherwise (1.5 -> 1.67, nearest)
    big = assign_bucket((2000, 1000), buckets, no_upscale=True, max_area=512 * 512)
    assert big[0] * big[1] <= 512 * 512


def test_batches_stay_within_a_bucket_and_repeat_folders(tmp_path):
    write_kohya(tmp_path / "d", "wide", (0, 0, 255), "w", n=3, repeats=2, sizes=[(128, 64)] * 3)
    write_kohya(tmp_path / "d", "square", (255, 0, 0), "s", n=2, repeats=1)
    cfg = DataSection(datasets=[DatasetEntry(path=str(tmp_path / "d"))], resolution=128, min_bucket_side=64,
                      max_bucket_side=256)
    data = TrainData.load(cfg, seed=0)
    # 2:1 images: buckets of area <= 128² are 128x128 (1:1), 192x64 (3:1), 256x64 (4:1); 3:1 is nearest in log ratio
    assert {it.bucket for it in data.train if "wide" in it.source} == {(192, 64)}
    assert {it.bucket for it in data.train if "square" in it.source} == {(128, 128)}
    batches = data.epoch_batches(0, 2)
    seen = [i for b in batches for i in b]
    for b in batches:
        assert len({data.train[i].bucket for i in b}) == 1 and len(b) == 2
    wide = [i for i, it in enumerate(data.train) if "wide" in it.source]
    # 3 images x 2 repeats = 6 wide samples (3 full batches), 2 squares = 1 batch
    assert sum(1 for i in seen if i in wide) == 6 and len(seen) == 8
    assert data.epoch_batches(0, 2) == batches  # a pure function of (seed, epoch)
    stream = data.batch_stream(2)
    first = [next(stream) for _ in range(10)]
    resumed = data.batch_stream(2, start_step=7)
    assert next(resumed) == first[7]
