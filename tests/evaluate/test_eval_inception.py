"""Our FID Inception against pytorch-fid's definition: parameter names, block wiring, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from animegen.evaluate.features import extract_features, preprocess
from animegen.evaluate.inception import (
    WEIGHTS_FILENAME,
    InceptionWeightsMissing,
    build_fid_inception,
    default_weights_path,
)


def expected_state_dict_shapes() -> dict[str, tuple]:
    """Parameter names/shapes of pt_inception-2015-12-05 as torchvision's Inception3(num_classes=1008,
    aux_logits=False) lays them out, written from the published architecture table."""
    shapes: dict[str, tuple] = {}

    def conv(name, cin, cout, kh, kw=None):
        kw = kh if kw is None else kw
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{p}"] = (cout,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()

    conv("Conv2d_1a_3x3", 3, 32, 3)
    conv("Conv2d_2a_3x3", 32, 32, 3)
    conv("Conv2d_2b_3x3", 32, 64, 3)
    conv("Conv2d_3b_1x1", 64, 80, 1)
    conv("Conv2d_4a_3x3", 80, 192, 3)
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        conv(f"{name}.branch1x1", cin, 64, 1)
        conv(f"{name}.branch5x5_1", cin, 48, 1)
        conv(f"{name}.branch5x5_2", 48, 64, 5)
        conv(f"{name}.branch3x3dbl_1", cin, 64, 1)
        conv(f"{name}.branch3x3dbl_2", 64, 96, 3)
        conv(f"{name}.branch3x3dbl_3", 96, 96, 3)
        conv(f"{name}.branch_pool", cin, pool, 1)
    conv("Mixed_6a.branch3x3", 288, 384, 3)
    conv("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    conv("Mixed_6a.branch3x3dbl_2", 64, 96, 3)
    conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        conv(f"{name}.branch1x1", 768, 192, 1)
        conv(f"{name}.branch7x7_1", 768, c7, 1)
        conv(f"{name}.branch7x7_2", c7, c7, 1, 7)
        conv(f"{name}.branch7x7_3", c7, 192, 7, 1)
        conv(f"{name}.branch7x7dbl_1", 768, c7, 1)
        conv(f"{name}.branch7x7dbl_2", c7, c7, 7, 1)
        conv(f"{name}.branch7x7dbl_3", c7, c7, 1, 7)
        conv(f"{name}.branch7x7dbl_4", c7, c7, 7, 1)
        conv(f"{name}.branch7x7dbl_5", c7, 192, 1, 7)
        conv(f"{name}.branch_pool", 768, 192, 1)
    conv("Mixed_7a.branch3x3_1", 768, 192, 1)
    conv("Mixed_7a.branch3x3_2", 192, 320, 3)
    conv("Mixed_7a.branch7x7x3_1", 768, 192, 1)
    conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
    conv("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        conv(f"{name}.branch1x1", cin, 320, 1)
        conv(f"{name}.branch3x3_1", cin, 384, 1)
        conv(f"{name}.branch3x3_2a", 384, 384, 1, 3)
        conv(f"{name}.branch3x3_2b", 384, 384, 3, 1)
        conv(f"{name}.branch3x3dbl_1", cin, 448, 1)
        conv(f"{name}.branch3x3dbl_2", 448, 384, 3)
        conv(f"{name}.branch3x3dbl_3a", 384, 384, 1, 3)
        conv(f"{name}.branch3x3dbl_3b", 384, 384, 3, 1)
        conv(f"{name}.branch_pool", cin, 192, 1)
    shapes["fc.weight"] = (1008, 2048)
    shapes["fc.bias"] = (1008,)
    return shapes


def test_parameter_names_and_shapes_match_the_published_state_dict(fid_net):
    ours = {k: tuple(v.shape) for k, v in fid_net.state_dict().items()}
    assert ours == expected_state_dict_shapes()


def test_weights_load_strictly_from_a_pth_and_missing_weights_say_where_to_put_them(tmp_path, fid_net):
    path = tmp_path / WEIGHTS_FILENAME
    torch.save(fid_net.state_dict(), path)
    loaded = build_fid_inception(path)
    for key, value in fid_net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.weights_id.startswith(WEIGHTS_FILENAME)
    with pytest.raises(InceptionWeightsMissing) as err:
        build_fid_inception(tmp_path / "nope.pth")
    assert str(default_weights_path()) in str(err.value) and "random" in str(err.value)
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not the pytorch-fid Inception"):
        build_fid_inception(bad)


# ---- independent re-implementation of pytorch-fid's pipeline ------------------------------------
def _ref_a(m, x):
    return torch.cat([m.branch1x1(x), m.branch5x5_2(m.branch5x5_1(x)),
                      m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x))),
                      m.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))], 1)


def _ref_b(m, x):
    return torch.cat([m.branch3x3(x), m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x))),
                      F.max_pool2d(x, 3, 2)], 1)


def _ref_c(m, x):
    d = x
    for i in range(1, 6):
        d = getattr(m, f"branch7x7dbl_{i}")(d)
    return torch.cat([m.branch1x1(x), m.branch7x7_3(m.branch7x7_2(m.branch7x7_1(x))), d,
                      m.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))], 1)


def _ref_d(m, x):
    b = x
    for i in range(1, 5):
        b = getattr(m, f"branch7x7x3_{i}")(b)
    return torch.cat([m.branch3x3_2(m.branch3x3_1(x)), b, F.max_pool2d(x, 3, 2)], 1)


def _ref_e(m, x, pool):
    b3 = m.branch3x3_1(x)
    bd = m.branch3x3dbl_2(m.branch3x3dbl_1(x))
    return torch.cat([m.branch1x1(x), m.branch3x3_2a(b3), m.branch3x3_2b(b3),
                      m.branch3x3dbl_3a(bd), m.branch3x3dbl_3b(bd), m.branch_pool(pool(x))], 1)


def reference_features(net, pil_image):
    """pytorch-fid: Image.open().convert('RGB') -> ToTensor -> InceptionV3 block 3 output."""
    arr = np.array(pil_image.convert("RGB"))  # HWC uint8
    x = torch.tensor(arr.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3):
        x = layer(x)
    x = F.max_pool2d(x, 3, 2)
    x = F.max_pool2d(net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x)), 3, 2)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        x = _ref_a(getattr(net, name), x)
    x = _ref_b(net.Mixed_6a, x)
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        x = _ref_c(getattr(net, name), x)
    x = _ref_d(net.Mixed_7a, x)
    x = _ref_e(net.Mixed_7b, x, lambda t: F.avg_pool2d(t, 3, 1, 1, count_include_pad=False))
    x = _ref_e(net.Mixed_7c, x, lambda t: F.max_pool2d(t, 3, 1, 1))
    return x.mean(dim=(2, 3))[0].numpy()


@pytest.fixture(scope="module")
def two_images():
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    yy, xx = np.mgrid[0:96, 0:96]
    b = Image.fromarray(np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.uint8)).convert("RGBA")
    return [a, b.convert("RGB")]


@torch.no_grad()
def test_features_match_independent_pytorch_fid_pipeline(fid_net, two_images):
    ours = extract_features(two_images, fid_net, mode="legacy", batch_size=2, progress=False)
    ref = np.stack([reference_features(fid_net, im) for im in two_images])
    assert ours.shape == (2, 2048)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    assert np.abs(ours[0] - ours[1]).max() > 1e-3  # different images, different features


def test_clean_mode_is_clean_fids_per_channel_pil_bicubic(two_images):
    image = two_images[0]
    arr = np.asarray(image).astype(np.float32)
    expected = np.zeros((3, 299, 299), np.float32)
    for c in range(3):
        resized = Image.fromarray(arr[..., c], mode="F").resize((299, 299), Image.BICUBIC)
        expected[c] = np.clip(np.asarray(resized), 0, 255) / 255
    got = preprocess(image, "clean").numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    legacy = preprocess(image, "legacy").numpy()
    assert np.abs(legacy - got).max() > 0.01  # the two modes really differ
    with pytest.raises(ValueError, match="legacy, clean"):
        preprocess(image, "bicubic")
