"""open_image: every hostile file gets a reason, awkward-but-valid files are normalised correctly."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from datakit import noise_image, png_bomb_bytes, write_hostile_folder
from PIL import Image

from animegen.core.files import sha256_file
from animegen.data.image_io import (
    ImageError,
    hash_distance,
    open_image,
    perceptual_hash,
    read_image,
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, write_hostile_folder(folder)


@pytest.mark.parametrize("name", ["truncated.jpg", "empty.png", "bomb.png", "notes.png", "error_page.jpg"])
def test_broken_files_raise_image_error_with_reason(hostile, name):
    folder, expected = hostile
    with pytest.raises(ImageError) as info:
        open_image(folder / name)
    assert info.value.path == str(folder / name)
    assert expected[name].lower() in info.value.reason.lower()


def test_pixel_limit_is_ours_not_only_pils(tmp_path):
    p = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(p)
    assert open_image(p, max_pixels=120_000).size == (400, 300)
    with pytest.raises(ImageError, match="too large: 400x300"):
        open_image(p, max_pixels=119_999)


def test_bomb_header_is_rejected_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bomb_bytes(12_000, 12_000))  # 144 MP: under PIL's own hard limit, over ours
    with pytest.raises(ImageError, match="too large: 12000x12000 .*decompression bomb"):
        open_image(p, max_pixels=100_000_000)


def test_wrong_extension_is_sniffed_and_flagged(hostile):
    folder, _ = hostile
    loaded = read_image(folder / "really_png.jpg")
    assert loaded.format == "PNG" and loaded.extension_mismatch
    assert np.array_equal(np.asarray(loaded.image), np.asarray(noise_image(2)))


def test_palette_transparency_goes_on_white(hostile):
    folder, _ = hostile
    img = open_image(folder / "palette.png")
    assert img.mode == "RGB" and img.size == (20, 10)
    assert img.getpixel((2, 5)) == (255, 255, 255)  # transparent index 0 (red) -> white
    assert img.getpixel((15, 5)) == (0, 0, 255)


def test_la_and_rgba_alpha_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (100, 50, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    buf.seek(0)
    from animegen.data.image_io import to_rgb

    out = to_rgb(Image.open(buf))
    assert out.getpixel((0, 0)) == (100, 50, 0)
    assert out.getpixel((3, 3)) == (255, 255, 255)
    # half-transparent black over white: 255 * (1 - 128/255) = 127
    assert all(abs(c - 127) <= 1 for c in out.getpixel((1, 0)))


def test_cmyk_becomes_rgb(hostile):
    folder, _ = hostile
    img = open_image(folder / "cmyk.jpg")
    assert img.mode == "RGB"
    r, g, b = img.getpixel((8, 8))
    assert r > 240 and g < 15 and b < 15  # C=0 M=255 Y=255 K=0 is red


def test_16_bit_grey_scaled_not_clipped(hostile):
    folder, _ = hostile
    loaded = read_image(folder / "gray16.png")
    assert loaded.source_mode.startswith("I")
    arr = np.asarray(loaded.image)
    assert arr.dtype == np.uint8 and arr.shape == (8, 8, 3)
    assert (arr[:, :4] == 128).all() and (arr[:, 4:] == 255).all()


def test_animated_gives_first_frame(hostile):
    folder, _ = hostile
    loaded = read_image(folder / "animated.gif")
    assert loaded.n_frames == 3
    assert loaded.image.getpixel((5, 5)) == (0, 255, 0)


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 5, 10))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)
    loaded = read_image(p)
    assert loaded.transposed and loaded.image.size == (10, 30)
    r, g, _ = loaded.image.getpixel((5, 2))  # left strip ends up on top after a 90 degree CW turn
    assert r > 200 and g < 60


def test_sha256_and_phash(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"hello")
    assert sha256_file(p) == hashlib.sha256(b"hello").hexdigest()
    a = noise_image(5, (64, 64))
    assert hash_distance(perceptual_hash(a), perceptual_hash(a.resize((60, 60)))) <= 4
    assert hash_distance(perceptual_hash(a), perceptual_hash(noise_image(6, (64, 64)))) > 10
    assert hash_distance("ff", "0f") == 4
