"""WD14 tagger: reference preprocessing pixel for pixel, decoding rules, the ONNX path, resumable tagging."""

from __future__ import annotations

import numpy as np
import pytest
from datakit import TAGGER_SIZE, TAGGER_TAGS, noise_image, write_tiny_tagger
from PIL import Image

from animegen.data.ingest import ingest
from animegen.data.manifest import load_manifest
from animegen.data.tagger import WD14Tagger, decode_predictions, mcut_threshold, preprocess
from animegen.data.tagging import tag_dataset


def reference_preprocess(image: Image.Image, size: int) -> np.ndarray:
    """Written out from SmilingWolf's wd-tagger app (prepare_image), step by step."""
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image.convert("RGBA"))
    image = canvas.convert("RGB")
    w, h = image.size
    m = max(w, h)
    pad_left, pad_top = (m - w) // 2, (m - h) // 2
    padded = Image.new("RGB", (m, m), (255, 255, 255))
    padded.paste(image, (pad_left, pad_top))
    if m != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    arr = np.asarray(padded, dtype=np.float32)
    return arr[:, :, ::-1]


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wd14")
    w, b = write_tiny_tagger(folder)
    return folder, w, b


def test_preprocess_matches_reference_pixel_for_pixel():
    wide = noise_image(1, (50, 21))
    rgba = noise_image(2, (17, 40), mode="RGBA")
    rgba.putalpha(Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 17), dtype=np.uint8)))
    exact = noise_image(4, (32, 32))
    for img in (wide, rgba, exact):
        got = preprocess(img, 32)
        assert got.dtype == np.float32 and got.shape == (32, 32, 3)
        assert np.array_equal(got, reference_preprocess(img, 32))
    # BGR order and white padding, checked by hand on a tiny case: a 2x1 blue image padded to 2x2
    tiny = Image.new("RGB", (2, 1), (0, 0, 255))
    arr = preprocess(tiny, 2)
    assert arr[0, 0].tolist() == [255.0, 0.0, 0.0]  # blue in BGR
    assert arr[1, 0].tolist() == [255.0, 255.0, 255.0]  # padding row is white


def test_mcut_splits_at_largest_gap():
    assert mcut_threshold(np.array([0.9, 0.85, 0.3, 0.2])) == pytest.approx((0.85 + 0.3) / 2)
    assert mcut_threshold(np.array([0.1, 0.95, 0.5])) == pytest.approx((0.95 + 0.5) / 2)


NAMES = ["general", "sensitive", "questionable", "explicit", "long hair", "smile", "^_^", "red eyes",
         "hatsune miku", "kirisame marisa"]
CATS = np.array([9, 9, 9, 9, 0, 0, 0, 0, 4, 4])


def test_thresholds_rating_blacklist_and_order():
    probs = np.array([0.2, 0.7, 0.05, 0.01, 0.36, 0.9, 0.34, 0.5, 0.86, 0.84])
    res = decode_predictions(probs, NAMES, CATS)
    assert res.rating == "sensitive"
    assert list(res.general) == ["smile", "red eyes", "long hair"]  # > 0.35, most confident first
    assert list(res.character) == ["hatsune miku"]  # > 0.85
    assert res.tags[0] == "hatsune miku"  # character tags first
    assert res.ratings["general"] == pytest.approx(0.2)
    res = decode_predictions(probs, NAMES, CATS, general_threshold=0.3, blacklist=["red_eyes"])
    assert list(res.general) == ["smile", "long hair", "^_^"]


def test_mcut_options_and_character_floor():
    probs = np.array([0.9, 0.1, 0.1, 0.1, 0.8, 0.75, 0.2, 0.1, 0.12, 0.05])
    res = decode_predictions(probs, NAMES, CATS, general_mcut=True, character_mcut=True)
    assert list(res.general) == ["long hair", "smile"]  # gap 0.75 -> 0.2 is the largest
    # character MCut would be (0.12 + 0.05) / 2 = 0.085, floored at 0.15 -> nothing passes
    assert res.character == {}
    assert res.rating == "general"


def test_onnx_tagger_end_to_end_against_numpy(tagger_dir):
    folder, w, b = tagger_dir
    tagger = WD14Tagger.from_pretrained(folder)
    assert tagger.size == TAGGER_SIZE and tagger.names[6] == "long hair" and "^_^" in tagger.names
    images = [noise_image(i, (40 + i, 30)) for i in range(3)]
    probs = tagger.predict(images)
    for img, p in zip(images, probs):
        x = reference_preprocess(img, TAGGER_SIZE).reshape(-1)
        want = 1 / (1 + np.exp(-(x @ w.astype(np.float64) + b)))
        np.testing.assert_allclose(p, want, rtol=1e-4, atol=1e-5)
    results = tagger.tag(images, general_threshold=0.5)
    for res, p in zip(results, probs):
        want_general = {TAGGER_TAGS[i][0].replace("_", " ") if TAGGER_TAGS[i][0] != "^_^" else "^_^"
                        for i in range(len(p)) if TAGGER_TAGS[i][1] == 0 and p[i] > 0.5}
        assert set(res.general) == want_general
        assert res.rating == TAGGER_TAGS[int(np.argmax(p[:4]))][0]


def test_tagger_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="selected_tags.csv"):
        (tmp_path / "model.onnx").write_bytes(b"")
        WD14Tagger.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="hub id"):
        WD14Tagger.from_pretrained(tmp_path / "missing" / "deeper" / "x")


class _CrashAfter:
    """Wraps a tagger, raising after `n` batches (a crash mid-run), counting the images it saw."""

    def __init__(self, tagger, n):
        self.tagger, self.n, self.seen, self.name = tagger, n, 0, tagger.name

    def tag(self, images, **kw):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        self.seen += len(images)
        return self.tagger.tag(images, **kw)


def test_tag_dataset_resumes_without_redoing(tmp_path, tagger_dir):
    folder, _, _ = tagger_dir
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        noise_image(50 + i, (32, 28)).save(src / f"{i}.png")
    (src / "broken.png").write_text("nope")
    ds = tmp_path / "ds"
    ingest([src], ds, progress=False)
    tagger = WD14Tagger.from_pretrained(folder)
    crashing = _CrashAfter(tagger, 2)
    with pytest.raises(KeyboardInterrupt):
        tag_dataset(ds, crashing, batch_size=3, progress=False)
    assert crashing.seen == 6
    assert sum(r.tags is not None for r in load_manifest(ds)) == 6  # both finished batches persisted
    second = _CrashAfter(tagger, 100)
    rep = tag_dataset(ds, second, batch_size=3, progress=False)
    assert second.seen == 4 and rep.tagged == 4 and rep.skipped == 6
    rows = [r for r in load_manifest(ds) if r.ok]
    assert len(rows) == 10 and all(r.tags is not None and r.rating for r in rows)
    direct = tagger.tag([Image.open(rows[0].path)])[0]
    assert rows[0].tags == list(direct.general) and rows[0].character_tags == list(direct.character)
