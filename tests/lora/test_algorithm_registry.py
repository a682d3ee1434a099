"""The algorithm contract: a module registered in `algorithms.ALGORITHMS` is read, detected, merged,
written and read back without any change to module.py, formats.py or apply.py.

The fake algorithm here ("outer": ΔW = alpha · u vᵀ, tensors `outer_u` / `outer_v`) exists only
inside this file; it is registered for one test and removed after.
"""

from __future__ import annotations

import types

import pytest
import torch
from lora_testutils import merged_copy, unet_out
from safetensors import safe_open
from safetensors.torch import save_file

from animegen.models.lora import algorithms, apply_loras, detect_kind, read_lora, remove_loras, write_lora
from animegen.models.lora.module import LoraFormatError

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # Linear 32 -> 32 in tiny SD1.5
KOHYA_Q = "lora_unet_" + Q.replace(".", "_")


def _outer_algorithm() -> types.ModuleType:
    algo = types.ModuleType("outer")
    algo.KIND = "outer"
    algo.REQUIRED = frozenset({"outer_u", "outer_v"})
    algo.OPTIONAL = frozenset()
    algo.NETWORK_MODULE = "lycoris.kohya"
    algo.LYCORIS_ALGO = "outer-product"
    algo.matches = lambda keys: keys == algo.REQUIRED
    algo.rank = lambda tensors: None
    algo.scale = lambda tensors, alpha: 1.0 if alpha is None else alpha
    algo.with_defaults = lambda tensors: tensors
    algo.delta = lambda tensors, alpha, base: (
        torch.outer(tensors["outer_u"].float(), tensors["outer_v"].float()).reshape(base.shape)
        * algo.scale(tensors, alpha))
    algo.delta_bias = lambda tensors, base_bias: None
    return algo


@pytest.fixture
def outer():
    algo = algorithms.register(_outer_algorithm())
    yield algo
    algorithms.unregister(algo.KIND)


def test_a_registered_algorithm_is_detected_merged_written_and_removed(outer, sd15, tmp_path):
    g = torch.Generator().manual_seed(3)
    u, v, alpha = torch.randn(32, generator=g) * 0.3, torch.randn(32, generator=g) * 0.3, 0.5
    path = tmp_path / "outer.safetensors"
    save_file({f"{KOHYA_Q}.outer_u": u, f"{KOHYA_Q}.outer_v": v, f"{KOHYA_Q}.alpha": torch.tensor(alpha)},
              str(path))

    lf = read_lora(path)
    module = lf.modules[f"unet.{Q}"]
    assert detect_kind({"outer_u", "outer_v", "alpha"}) == "outer" and module.kind == "outer"

    base = unet_out(sd15.unet)
    expected = unet_out(merged_copy(sd15.unet, {Q: alpha * torch.outer(u, v)}))
    assert apply_loras(sd15, [(lf, 1.0)]) == 1
    got = unet_out(sd15.unet)
    assert (expected - base).abs().max() > 1e-4, "test delta too small to be visible"
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    remove_loras(sd15)
    assert torch.equal(unet_out(sd15.unet), base)

    for fmt in ("kohya", "diffusers"):  # the writers and both readers know its tensor names too
        out = write_lora(lf, tmp_path / f"{fmt}.safetensors", format=fmt)
        assert read_lora(out) == lf
    with safe_open(str(tmp_path / "kohya.safetensors"), "pt") as f:
        header = f.metadata()
    assert header["ss_network_module"] == "lycoris.kohya" and '"algo": "outer-product"' in header["ss_network_args"]


def test_unregistered_keys_are_not_understood(tmp_path):
    path = tmp_path / "outer.safetensors"
    save_file({f"{KOHYA_Q}.outer_u": torch.ones(32), f"{KOHYA_Q}.outer_v": torch.ones(32)}, str(path))
    with pytest.raises(LoraFormatError, match="outer_u"):
        read_lora(path)


def test_register_names_what_a_module_lacks_and_refuses_a_taken_kind():
    incomplete = types.ModuleType("incomplete")
    incomplete.KIND = "incomplete"
    incomplete.delta = lambda tensors, alpha, base: base
    with pytest.raises(TypeError, match="REQUIRED.*matches.*rank"):
        algorithms.register(incomplete)
    impostor = _outer_algorithm()
    impostor.KIND = "lora"
    with pytest.raises(ValueError, match="'lora' is already registered"):
        algorithms.register(impostor)
    assert "incomplete" not in algorithms.ALGORITHMS and algorithms.ALGORITHMS["lora"].__name__.endswith(".lora")


def test_keys_two_algorithms_claim_are_refused(outer):
    twin = _outer_algorithm()
    twin.KIND = "outer_twin"
    algorithms.register(twin)
    try:
        with pytest.raises(LoraFormatError, match="several LoRA algorithms \\(outer, outer_twin\\)"):
            detect_kind({"outer_u", "outer_v"})
    finally:
        algorithms.unregister(twin.KIND)
