"""ESRGAN-family upscalers: every supported key layout loads into a network whose output equals a forward
written here from the papers' equations (plain torch.nn.functional on the raw tensors), tiling changes
nothing where the receptive field fits the overlap, and the pickle policy holds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from animegen.core.files import PickleRefusedError
from animegen.generate.upscale import upscaler_upscale
from animegen.models.upscalers import (
    UpscalerFormatError,
    load_upscaler,
    tiled_forward,
    upscale_image,
    upscaler_from_state_dict,
)

torch.set_num_threads(1)

# ----------------------------------------------------------------------------------- tiny random weights


def _conv(gen: torch.Generator, cin: int, cout: int, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    std = 0.7 / math.sqrt(cin * k * k)
    return torch.randn(cout, cin, k, k, generator=gen) * std, torch.randn(cout, generator=gen) * 0.05


def rrdb_state(scale: int = 4, blocks: int = 2, feat: int = 8, grow: int = 4, seed: int = 0,
               upconvs: int = 2) -> dict[str, torch.Tensor]:
    """A Real-ESRGAN ("new") layout RRDBNet state dict; scale 2 / 1 take 4x / 16x input channels."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def put(name: str, cin: int, cout: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = _conv(gen, cin, cout)

    unshuffle = {4: 1, 2: 2, 1: 4}[scale] if upconvs == 2 else 1
    put("conv_first", 3 * unshuffle * unshuffle, feat)
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                put(f"body.{b}.rdb{r}.conv{c}", feat + (c - 1) * grow, grow if c < 5 else feat)
    put("conv_body", feat, feat)
    for u in range(1, upconvs + 1):
        put(f"conv_up{u}", feat, feat)
    put("conv_hr", feat, feat)
    put("conv_last", feat, 3)
    return sd


def to_old_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under the original ESRGAN `model.N` keys (written here, independent of the loader)."""
    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    ups = sorted(int(k[len("conv_up")]) for k in sd if k.startswith("conv_up") and k.endswith(".weight"))
    out = {}
    for k, v in sd.items():
        name, kind = k.rsplit(".", 1)
        if name == "conv_first":
            out[f"model.0.{kind}"] = v
        elif name.startswith("body."):
            _, b, rdb, conv = name.split(".")
            out[f"model.1.sub.{b}.RDB{rdb[3:]}.{conv}.0.{kind}"] = v
        elif name == "conv_body":
            out[f"model.1.sub.{blocks}.{kind}"] = v
        elif name.startswith("conv_up"):
            out[f"model.{3 * int(name[7:])}.{kind}"] = v
        elif name == "conv_hr":
            out[f"model.{3 * len(ups) + 2}.{kind}"] = v
        elif name == "conv_last":
            out[f"model.{3 * len(ups) + 4}.{kind}"] = v
    return out


def to_bsrgan_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights under BSRGAN / RealSR's names (RRDB_trunk, trunk_conv, upconvN, HRconv)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("body."):
            _, b, rdb, rest = k.split(".", 3)
            out[f"RRDB_trunk.{b}.RDB{rdb[3:]}.{rest}"] = v
        else:
            out[k.replace("conv_body", "trunk_conv").replace("conv_up", "upconv").replace("conv_hr", "HRconv")] = v
    return out


def srvgg_state(scale: int = 4, convs: int = 2, feat: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    sd["body.0.weight"], sd["body.0.bias"] = _conv(gen, 3, feat)
    index = 1
    for i in range(convs + 1):
        sd[f"body.{index}.weight"] = 0.25 + 0.1 * torch.randn(feat, generator=gen)  # PReLU slopes
        index += 1
        cout = feat if i < convs else 3 * scale * scale
        sd[f"body.{index}.weight"], sd[f"body.{index}.bias"] = _conv(gen, feat, cout)
        index += 1
    return sd


# ----------------------------------------------------------------------------------- reference forwards


def _c(sd, name, x):
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)


def _lrelu(x):
    return torch.where(x >= 0, x, 0.2 * x)


def _unshuffle(x, r):
    """Space-to-depth: channel c*r*r + i*r + j holds pixel (r*y + i, r*x + j) of channel c."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // r, r, w // r, r).permute(0, 1, 3, 5, 2, 4).reshape(b, c * r * r, h // r, w // r)


def _shuffle(x, r):
    b, c, h, w = x.shape
    return x.reshape(b, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (r * r), h * r, w * r)


def _nearest_up(x, r):
    return x.repeat_interleave(r, dim=2).repeat_interleave(r, dim=3)


def reference_rrdb(sd, x):
    """ESRGAN (Wang et al. 2018), Real-ESRGAN's input unshuffle: dense blocks scaled by 0.2, nearest x2 ups."""
    r = math.isqrt(sd["conv_first.weight"].shape[1] // 3)
    feat = _unshuffle(x, r) if r > 1 else x
    feat = _c(sd, "conv_first", feat)
    h = feat
    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
    for b in range(blocks):
        block_in = h
        for rdb in (1, 2, 3):
            inputs = [h]
            for conv in range(1, 6):
                y = _c(sd, f"body.{b}.rdb{rdb}.conv{conv}", torch.cat(inputs, 1))
                inputs.append(_lrelu(y) if conv < 5 else y)
            h = inputs[-1] * 0.2 + h
        h = h * 0.2 + block_in
    feat = feat + _c(sd, "conv_body", h)
    u = 1
    while f"conv_up{u}.weight" in sd:
        feat = _lrelu(_c(sd, f"conv_up{u}", _nearest_up(feat, 2)))
        u += 1
    return _c(sd, "conv_last", _lrelu(_c(sd, "conv_hr", feat)))


def reference_srvgg(sd, x):
    """SRVGGNetCompact (Real-ESRGAN): conv/PReLU stack, pixel shuffle, plus the nearest-upsampled input."""
    n = 1 + max(int(k.split(".")[1]) for k in sd)
    h = x
    for i in range(n):
        w = sd[f"body.{i}.weight"]
        h = F.conv2d(h, w, sd[f"body.{i}.bias"], padding=1) if w.ndim == 4 else torch.where(
            h >= 0, h, w.view(1, -1, 1, 1) * h)
    r = math.isqrt(h.shape[1] // 3)
    return _shuffle(h, r) + _nearest_up(x, r)


def _image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _save(sd, path, wrapper: str | None = None):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({wrapper: sd} if wrapper else sd, path)
    return path


# ----------------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("layout", ["new", "old", "bsrgan"])
@pytest.mark.parametrize("scale", [4, 2, 1])
def test_rrdb_equals_reference_forward_in_every_layout(tmp_path, layout, scale):
    sd = rrdb_state(scale=scale)
    stored = {"new": sd, "old": to_old_layout(sd), "bsrgan": to_bsrgan_layout(sd)}[layout]
    net = load_upscaler(_save(stored, tmp_path / "m.safetensors"))
    x = _image(12, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), reference_rrdb(sd, x), atol=1e-5, rtol=0)
    assert (net.scale, net.info["blocks"], net.info["features"], net.info["growth"]) == (scale, 2, 8, 4)
    assert net.info["architecture"] == "RRDBNet"


def test_old_layout_scale_follows_the_number_of_upsampling_convs(tmp_path):
    for upconvs, scale in ((1, 2), (3, 8)):
        sd = rrdb_state(upconvs=upconvs, blocks=1)
        net = upscaler_from_state_dict(to_old_layout(sd))
        x = _image(6, 5)
        with torch.no_grad():
            assert torch.allclose(net(x), reference_rrdb(sd, x), atol=1e-5, rtol=0)
        assert net.scale == scale and net(x).shape[-2:] == (6 * scale, 5 * scale)


def test_anime6b_shape_is_detected_from_the_keys_alone():
    net = upscaler_from_state_dict(rrdb_state(blocks=6, feat=64, grow=32))
    assert (net.scale, net.info["blocks"], net.info["features"], net.info["growth"]) == (4, 6, 64, 32)


@pytest.mark.parametrize("scale", [4, 2])
def test_srvgg_compact_equals_reference_forward(tmp_path, scale):
    sd = srvgg_state(scale=scale, convs=3)
    net = load_upscaler(_save(sd, tmp_path / "compact.safetensors"))
    x = _image(10, 7)
    with torch.no_grad():
        assert torch.allclose(net(x), reference_srvgg(sd, x), atol=1e-5, rtol=0)
    assert net.info["architecture"] == "SRVGGNetCompact"
    assert (net.scale, net.info["convs"], net.info["features"]) == (scale, 3, 8)


@pytest.mark.parametrize("wrapper", [None, "params", "params_ema"])
def test_pth_reads_only_under_the_pickle_policy_and_unwraps_params(tmp_path, wrapper):
    sd = rrdb_state(blocks=1)
    path = _save(sd, tmp_path / "RealESRGAN_x4plus.pth", wrapper)
    with pytest.raises(PickleRefusedError):
        load_upscaler(path)
    net = load_upscaler(path, allow_pickle=True)
    x = _image(5, 6)
    with torch.no_grad():
        assert torch.allclose(net(x), reference_rrdb(sd, x), atol=1e-5, rtol=0)


def test_params_ema_is_preferred_over_params(tmp_path):
    ema, plain = srvgg_state(seed=1), srvgg_state(seed=2)
    path = tmp_path / "animevideov3.pth"
    torch.save({"params": plain, "params_ema": ema}, path)
    net = load_upscaler(path, allow_pickle=True)
    x = _image(4, 4)
    with torch.no_grad():
        assert torch.allclose(net(x), reference_srvgg(ema, x), atol=1e-5, rtol=0)


def test_unknown_layout_names_what_was_found_and_what_is_supported():
    with pytest.raises(UpscalerFormatError, match=r"(?s)layers\.0\.attn\.qkv\.weight.*RRDBNet.*SRVGGNetCompact"):
        upscaler_from_state_dict({"layers.0.attn.qkv.weight": torch.zeros(3, 3)})


def test_extra_or_missing_keys_in_a_known_layout_are_named():
    sd = rrdb_state(blocks=1)
    with pytest.raises(UpscalerFormatError, match=r"body\.0\.rdb1\.conv1x1\.weight"):
        upscaler_from_state_dict({**sd, "body.0.rdb1.conv1x1.weight": torch.zeros(4, 8, 1, 1)})
    del sd["conv_hr.bias"]
    with pytest.raises(UpscalerFormatError, match=r"conv_hr\.bias"):
        upscaler_from_state_dict(sd)
    compact = srvgg_state()
    compact["body.3.weight"] = torch.zeros(8, 4, 3, 3)
    with pytest.raises(UpscalerFormatError, match=r"body\.3\.weight"):
        upscaler_from_state_dict(compact)


def test_an_empty_or_foreign_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="broken.safetensors"):
        load_upscaler(path)
    with pytest.raises(UpscalerFormatError, match="no tensors"):
        upscaler_from_state_dict({})


# ----------------------------------------------------------------------------------- tiling


class _Recording(torch.nn.Module):
    """The network, recording the spatial size of every input it is called with."""

    def __init__(self, net):
        super().__init__()
        self.net, self.scale, self.input_multiple, self.sizes = net, net.scale, net.input_multiple, []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return self.net(x)


@pytest.mark.parametrize(("make", "tile", "overlap", "size"), [
    (lambda: srvgg_state(convs=2), 8, 5, (21, 30)),
    (lambda: rrdb_state(blocks=1, scale=4), 12, 19, (40, 29)),
    (lambda: rrdb_state(blocks=1, scale=2), 12, 38, (46, 51)),
])
def test_tiled_equals_untiled_and_never_exceeds_the_tile(make, tile, overlap, size):
    net = _Recording(upscaler_from_state_dict(make()))
    x = _image(*size)
    with torch.no_grad():
        whole = tiled_forward(net, x, tile=0, overlap=0)
        assert len(net.sizes) == 1
        net.sizes.clear()
        tiled = tiled_forward(net, x, tile=tile, overlap=overlap)
    assert tiled.shape == whole.shape == (1, 3, size[0] * net.scale, size[1] * net.scale)
    assert torch.allclose(tiled, whole, atol=1e-5, rtol=0)
    assert len(net.sizes) > 4
    limit = tile + 2 * overlap
    assert all(h <= limit and w <= limit for h, w in net.sizes), net.sizes


def test_tiles_that_ignore_the_context_would_differ():
    """The overlap is what makes tiling exact: without it the tile edges show (so the test above can fail)."""
    net = upscaler_from_state_dict(srvgg_state(convs=2))
    x = _image(21, 30)
    with torch.no_grad():
        assert not torch.allclose(tiled_forward(net, x, tile=8, overlap=0), tiled_forward(net, x, tile=0, overlap=0),
                                  atol=1e-5, rtol=0)


def test_bad_tile_settings_are_refused():
    net = upscaler_from_state_dict(srvgg_state())
    with pytest.raises(UpscalerFormatError, match="overlap"):
        tiled_forward(net, _image(8, 8), tile=16, overlap=-1)


# ----------------------------------------------------------------------------------- upscale_image


def _pil(w: int, h: int, seed: int = 3) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


def _as_pil(t: torch.Tensor) -> Image.Image:
    arr = (t[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def _as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("name", ["Lanczos", "nearest", "None"])
def test_built_in_upscalers_are_the_pil_ones(name):
    image = _pil(20, 12)
    got = upscale_image(image, name, 2.5)
    want = upscaler_upscale(image, 2.5, {"nearest": "Nearest"}.get(name, name))
    assert got.size == want.size == (48, 24) and got.tobytes() == want.tobytes()


def test_model_upscale_at_its_own_scale_is_the_network_on_the_rgb_pixels(tmp_path):
    sd = srvgg_state(convs=2)
    path = _save(sd, tmp_path / "compact.safetensors")
    image = _pil(16, 24)
    got = upscale_image(image, path, 4, tile=8, overlap=4)
    with torch.no_grad():
        want = _as_pil(reference_srvgg(sd, _as_tensor(image)))
    assert got.size == (64, 96) and got.tobytes() == want.tobytes()


def test_model_upscale_to_another_scale_resizes_with_lanczos_as_a1111(tmp_path):
    sd = srvgg_state(scale=2, convs=1)
    path = _save(sd, tmp_path / "x2.safetensors")
    image = _pil(16, 24)
    with torch.no_grad():
        once = _as_pil(reference_srvgg(sd, _as_tensor(image)))
        twice = _as_pil(reference_srvgg(sd, _as_tensor(once)))
    # below the model's scale: one pass, then Lanczos down to (side * scale) // 8 * 8
    assert upscale_image(image, path, 1.5).tobytes() == once.resize((24, 32), Image.LANCZOS).tobytes()
    # above it: passes until the image covers the target (A1111's Upscaler.upscale), then Lanczos
    got = upscale_image(image, path, 3)
    assert got.size == (48, 72) and got.tobytes() == twice.resize((48, 72), Image.LANCZOS).tobytes()


def test_unknown_upscaler_name_lists_the_choices(tmp_path):
    with pytest.raises(UpscalerFormatError, match=r"(?s)ESRGAN_4x.*Lanczos.*\.safetensors"):
        upscale_image(_pil(8, 8), "ESRGAN_4x", 4)
    with pytest.raises(UpscalerFormatError, match="scale"):
        upscale_image(_pil(8, 8), "Lanczos", 0)
