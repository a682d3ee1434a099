"""Image folders: bad input gives clear errors, unreadable files are reported, real-set stats are cached."""

from __future__ import annotations

import numpy as np
import pytest
from eval_testutils import write_images

from animegen.evaluate.features import folder_features, list_images
from animegen.evaluate.metrics import MetricError


def test_empty_missing_and_file_paths_are_clear_errors(tmp_path, fid_net):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(MetricError, match="contains no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(MetricError, match="does not exist"):
        list_images(tmp_path / "missing")
    with pytest.raises(MetricError, match="is a file"):
        list_images(tmp_path / "empty" / "notes.txt")


def test_one_image_and_only_broken_images_are_refused(tmp_path, fid_net):
    one = tmp_path / "one"
    write_images(one, 1, seed=0)
    with pytest.raises(MetricError, match="1 readable image"):
        folder_features(one, fid_net, progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (broken / "b.jpg").write_bytes(b"")
    with pytest.raises(MetricError, match="0 readable image.*unreadable"):
        folder_features(broken, fid_net, progress=False)


def test_unreadable_files_are_skipped_and_named_and_stats_are_cached(tmp_path, fid_net):
    real = tmp_path / "real"
    write_images(real, 2, seed=5, sizes=((64, 64), (40, 90)))  # mismatched sizes are fine
    (real / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cache = tmp_path / "cache"
    first = folder_features(real, fid_net, cache_dir=cache, progress=False)
    assert first.features.shape == (2, 2048) and not first.from_cache
    assert [p for p, _ in first.skipped] == [str(real / "zz_truncated.png")]
    assert len(list(cache.glob("*.npz"))) == 1
    with np.load(next(cache.glob("*.npz"))) as data:
        np.testing.assert_allclose(data["mu"], first.features.astype(np.float64).mean(0), rtol=1e-12)
        np.testing.assert_allclose(data["sigma"], np.cov(first.features.astype(np.float64), rowvar=False),
                                   rtol=1e-10, atol=1e-12)
    # Renaming keeps the content hash: cache hit with identical features.
    (real / "img_000.png").rename(real / "renamed.png")
    second = folder_features(real, fid_net, cache_dir=cache, progress=False)
    assert second.from_cache
    np.testing.assert_array_equal(second.features, first.features)
    assert second.skipped == first.skipped
    # Another resize mode is another cache entry.
    clean = folder_features(real, fid_net, cache_dir=cache, mode="clean", progress=False)
    assert not clean.from_cache and len(list(cache.glob("*.npz"))) == 2
    # Changing one image's pixels invalidates the cache.
    write_images(tmp_path / "other", 1, seed=99)
    (tmp_path / "other" / "img_000.png").replace(real / "renamed.png")
    third = folder_features(real, fid_net, cache_dir=cache, progress=False)
    assert not third.from_cache
    assert not np.allclose(third.features, first.features)
