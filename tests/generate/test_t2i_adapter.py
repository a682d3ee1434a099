"""T2I-Adapter loading: the original TencentARC layout converts and its features equal a hand-written forward of
TencentARC's sd15v2 `Adapter` (sk=True, ksize=1, use_conv=False) on the same weights."""

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from animegen.generate.t2i_adapter import adapter_features, is_adapter_path, load_adapter
from animegen.models.tiny_adapters import tiny_t2i_adapter_state


def reference_forward(state, x, channels, nums_rb, shuffle=8):
    """TencentARC ldm/modules/encoders/adapter.py Adapter.forward, written out (SD1: downsample at levels 1..3)."""
    x = F.pixel_unshuffle(x, shuffle)
    x = F.conv2d(x, state["conv_in.weight"], state["conv_in.bias"], padding=1)
    out = []
    for i in range(len(channels)):
        for r in range(nums_rb):
            b = i * nums_rb + r
            if i > 0 and r == 0:
                x = F.avg_pool2d(x, 2, 2)
            if f"body.{b}.in_conv.weight" in state:
                x = F.conv2d(x, state[f"body.{b}.in_conv.weight"], state[f"body.{b}.in_conv.bias"])
            h = F.relu(F.conv2d(x, state[f"body.{b}.block1.weight"], state[f"body.{b}.block1.bias"], padding=1))
            x = F.conv2d(h, state[f"body.{b}.block2.weight"], state[f"body.{b}.block2.bias"]) + x
        out.append(x)
    return out


def test_original_layout_features_equal_reference(tmp_path):
    channels = (8, 16, 32, 32)
    state = tiny_t2i_adapter_state(channels, 2, seed=3)
    path = tmp_path / "t2iadapter_tiny_sd15v2.safetensors"
    save_file(state, str(path))
    assert is_adapter_path(path)
    adapter = load_adapter(path)
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = adapter_features(adapter, hint, weight=0.7)
    ref = reference_forward(state, hint, channels, 2)
    assert [o.shape for o in ours] == [(1, 8, 8, 8), (1, 16, 4, 4), (1, 32, 2, 2), (1, 32, 1, 1)]
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, 0.7 * r, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(f, torch.zeros_like(f)) for f in adapter_features(adapter, hint, weight=0.0))


def test_one_channel_adapter_reads_first_channel(tmp_path):
    state = tiny_t2i_adapter_state((8, 16, 32, 32), 2, cin=64, seed=4)
    path = tmp_path / "t2iadapter_canny_tiny.safetensors"
    save_file(state, str(path))
    adapter = load_adapter(path)
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ref = reference_forward(state, hint[:, :1], (8, 16, 32, 32), 2)
    for o, r in zip(adapter_features(adapter, hint), ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6)
