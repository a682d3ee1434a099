"""LoRA tools (models/lora/tools.py) against hand-computed references: SVD extraction, kohya resize,
merges into one LoRA and into a checkpoint, layout conversion."""

from __future__ import annotations

import copy

import pytest
import torch
from lora_testutils import layer
from safetensors.torch import load_file

from animegen.models.lora import LoraFile, LoraModule, read_lora, write_lora
from animegen.models.lora.tools import (
    LoraToolError,
    convert_lora,
    extract_lora,
    merge_lora_into_checkpoint,
    merge_loras,
    resize_lora,
)

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"
CONV = "down_blocks.1.resnets.0.conv1"


def _best_rank(weight: torch.Tensor, r: int) -> torch.Tensor:
    m = weight.reshape(weight.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return ((u[:, :r] * s[:r]) @ vh[:r]).reshape(weight.shape).float()


@pytest.fixture
def tuned(sd15):
    """A copy of the tiny SD1.5 pipeline with known weight changes on three layers."""
    g = torch.Generator().manual_seed(7)
    pipe = copy.deepcopy(sd15)
    deltas = {}
    with torch.no_grad():
        for component, path in (("unet", Q), ("text_encoder", TE_Q), ("unet", CONV)):
            w = layer(getattr(pipe, component), path).weight
            d = 0.05 * torch.randn(w.shape, generator=g)
            w += d
            deltas[f"{component}.{path}"] = d
    return pipe, deltas


def test_extract_at_full_rank_reproduces_the_difference(sd15, tuned):
    pipe, deltas = tuned
    lf, report = extract_lora(sd15, pipe, rank=10_000, conv_rank=10_000)
    assert set(lf.modules) == set(deltas)
    for target, d in deltas.items():
        m = lf.modules[target]
        assert m.scale == 1.0
        torch.testing.assert_close(m.delta_weight(torch.zeros(d.shape)), d, rtol=0, atol=1e-5)
        assert report[target].fro_retained == pytest.approx(1.0, abs=1e-6)


def test_extract_at_rank_r_is_the_best_rank_r_approximation(sd15, tuned):
    pipe, deltas = tuned
    lf, report = extract_lora(sd15, pipe, rank=3, conv_rank=2)
    for target, d in deltas.items():
        r = 2 if target.endswith("conv1") else 3
        assert lf.modules[target].rank == r and report[target].rank == r
        torch.testing.assert_close(lf.modules[target].delta_weight(torch.zeros(d.shape)), _best_rank(d, r),
                                   rtol=0, atol=1e-5)
    assert "unet." + CONV not in extract_lora(sd15, pipe, rank=3)[0].modules  # no conv_rank: no ResNet layers


def test_extract_by_energy_keeps_the_smallest_rank_reaching_it(sd15, tuned):
    pipe, deltas = tuned
    _, report = extract_lora(sd15, pipe, energy=0.8)
    d = deltas["unet." + Q]
    s = torch.linalg.svdvals(d.double())
    fraction = (torch.cumsum(s ** 2, 0) / (s ** 2).sum()).sqrt()
    expected = int((fraction < 0.8).sum()) + 1
    info = report["unet." + Q]
    assert info.rank == expected and info.fro_retained >= 0.8
    assert float(fraction[expected - 2]) < 0.8


def _random_lora(seed: int, rank: int = 8, alpha: float | None = 4.0, conv: bool = False) -> LoraFile:
    g = torch.Generator().manual_seed(seed)
    mods = {
        "unet." + Q: LoraModule("unet." + Q, "lora", {"lora_down.weight": torch.randn(rank, 32, generator=g),
                                                      "lora_up.weight": torch.randn(32, rank, generator=g)}, alpha),
        "text_encoder." + TE_Q: LoraModule("text_encoder." + TE_Q, "lora", {
            "lora_down.weight": torch.randn(rank, 64, generator=g),
            "lora_up.weight": torch.randn(64, rank, generator=g)}, alpha),
    }
    if conv:
        mods["unet." + CONV] = LoraModule("unet." + CONV, "lora", {
            "lora_down.weight": torch.randn(rank, 32, 3, 3, generator=g),
            "lora_up.weight": torch.randn(64, rank, 1, 1, generator=g)}, alpha)
    return LoraFile(mods, {})


def _delta(m: LoraModule, shape) -> torch.Tensor:
    return m.delta_weight(torch.zeros(shape))


def test_resize_reports_the_retained_energy_and_keeps_the_scale():
    lf = _random_lora(1, rank=8, alpha=4.0, conv=True)
    small, report = resize_lora(lf, 3)
    for target, m in lf.modules.items():
        up, down = m.tensors["lora_up.weight"], m.tensors["lora_down.weight"]
        full = (up.flatten(1) @ down.flatten(1)).double()
        s = torch.linalg.svdvals(full)
        assert report[target].fro_retained == pytest.approx(float(((s[:3] ** 2).sum() / (s ** 2).sum()).sqrt()), rel=1e-6)
        assert report[target].sum_retained == pytest.approx(float(s[:3].sum() / s.sum()), rel=1e-6)
        new = small.modules[target]
        assert new.rank == 3 and new.alpha == pytest.approx(4.0 / 8 * 3)
        shape = (up.shape[0], *down.shape[1:]) if down.dim() == 4 else (up.shape[0], down.shape[1])
        ref = _best_rank(full.float().reshape(shape), 3) * (4.0 / 8)
        torch.testing.assert_close(_delta(new, shape), ref, rtol=1e-4, atol=1e-4)


def test_resize_dynamic_methods_as_kohya():
    lf = _random_lora(2, rank=8, alpha=8.0)
    m = lf.modules["unet." + Q]
    s = torch.linalg.svdvals((m.tensors["lora_up.weight"] @ m.tensors["lora_down.weight"]).double())[:8]
    fro = (torch.cumsum(s ** 2, 0) / (s ** 2).sum()).sqrt()
    _, report = resize_lora(lf, 8, method="sv_fro", param=0.9)
    assert report["unet." + Q].rank == int((fro < 0.9).sum()) + 1
    _, report = resize_lora(lf, 8, method="sv_ratio", param=3.0)
    assert report["unet." + Q].rank == int((s > s[0] / 3.0).sum())
    _, capped = resize_lora(lf, 2, method="sv_fro", param=0.999)
    assert capped["unet." + Q].rank == 2


def test_resize_refuses_other_algorithms_by_name():
    loha = LoraFile({"unet." + Q: LoraModule("unet." + Q, "loha", {
        "hada_w1_a": torch.ones(32, 2), "hada_w1_b": torch.ones(2, 32),
        "hada_w2_a": torch.ones(32, 2), "hada_w2_b": torch.ones(2, 32)}, 2.0)}, {})
    with pytest.raises(LoraToolError, match=r"to_q is a loha module"):
        resize_lora(loha, 1)


def _shape(m: LoraModule):
    up, down = m.tensors["lora_up.weight"], m.tensors["lora_down.weight"]
    return (up.shape[0], *down.shape[1:]) if down.dim() == 4 else (up.shape[0], down.shape[1])


def test_merge_loras_concat_is_exact_and_svd_is_best_rank():
    a, b = _random_lora(3, rank=4, alpha=2.0, conv=True), _random_lora(4, rank=6, alpha=None)
    merged, _ = merge_loras([(a, 0.5), (b, -1.25)])
    svd, info = merge_loras([(a, 0.5), (b, -1.25)], rank=2)
    assert merged.modules.keys() == svd.modules.keys() == a.modules.keys()
    for target, ma in a.modules.items():
        shape = _shape(ma)
        expected = 0.5 * _delta(ma, shape)
        rank = ma.rank
        if target in b.modules:
            expected = expected - 1.25 * _delta(b.modules[target], shape)
            rank += b.modules[target].rank
        assert merged.modules[target].rank == rank and merged.modules[target].scale == 1.0
        torch.testing.assert_close(_delta(merged.modules[target], shape), expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(_delta(svd.modules[target], shape), _best_rank(expected, 2), rtol=1e-4, atol=1e-3)
        assert svd.modules[target].rank == 2 and info[target].rank == 2


@pytest.fixture
def sd15_file(sd15, tmp_path):
    from animegen.models.single_file import save_single_file

    return save_single_file(sd15, tmp_path / "base.safetensors")


def test_merge_into_checkpoint_is_w_plus_weight_scale_up_down(sd15_file, tmp_path):
    from animegen.models.loading import load_pipeline

    lf = _random_lora(5, rank=4, alpha=2.0)
    path = write_lora(lf, tmp_path / "l.safetensors")
    out = tmp_path / "merged.safetensors"
    assert merge_lora_into_checkpoint(sd15_file, [(path, 0.8)], out) == 2
    before, after = load_file(str(sd15_file)), load_file(str(out))
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    m = lf.modules["unet." + Q]
    expected = before[key] + 0.8 * (2.0 / 4) * (m.tensors["lora_up.weight"] @ m.tensors["lora_down.weight"])
    torch.testing.assert_close(after[key], expected, rtol=0, atol=1e-5)
    te = "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    m = lf.modules["text_encoder." + TE_Q]
    torch.testing.assert_close(after[te], before[te] + 0.8 * 0.5 * (m.tensors["lora_up.weight"] @ m.tensors["lora_down.weight"]),
                               rtol=0, atol=1e-5)
    untouched = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"
    assert torch.equal(after[untouched], before[untouched])
    pipe = load_pipeline(out, device="cpu", dtype="float32")  # the project's loader reads it
    torch.testing.assert_close(pipe.unet.get_submodule(Q).weight.detach(), expected, rtol=0, atol=1e-5)


def test_convert_kohya_peft_kohya_round_trips_bit_exact(tmp_path):
    lf = _random_lora(6, rank=4, alpha=3.0, conv=True)
    kohya = write_lora(lf, tmp_path / "k.safetensors", metadata={"ss_output_name": "mine"})
    peft = convert_lora(kohya, tmp_path / "p.safetensors", "peft")
    back = convert_lora(peft, tmp_path / "k2.safetensors", "kohya")
    one, two = load_file(str(kohya)), load_file(str(back))
    assert one.keys() == two.keys() and any(k.startswith("lora_unet_") for k in one)
    for k in one:
        assert one[k].dtype == two[k].dtype and torch.equal(one[k], two[k]), k
    assert any(".lora_A.weight" in k for k in load_file(str(peft)))
    assert read_lora(back) == lf and read_lora(back).metadata["ss_output_name"] == "mine"


def test_convert_to_lycoris_header(tmp_path):
    import json

    lf = _random_lora(7, rank=2, alpha=1.0)
    out = convert_lora(lf, tmp_path / "ly.safetensors", "lycoris")
    meta = read_lora(out).metadata
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == "locon"
    assert read_lora(out) == lf
    with pytest.raises(LoraToolError, match="unknown LoRA layout"):
        convert_lora(lf, tmp_path / "x.safetensors", "comfy")


def test_cli_lora_tools(tmp_path):
    from typer.testing import CliRunner

    from animegen.cli.tools import tools_app

    runner = CliRunner()
    a = write_lora(_random_lora(8, rank=4, alpha=4.0), tmp_path / "a.safetensors")
    b = write_lora(_random_lora(9, rank=4, alpha=4.0), tmp_path / "b.safetensors")
    result = runner.invoke(tools_app, ["lora-resize", str(a), "--out", str(tmp_path / "r.safetensors"), "--rank", "2"])
    assert result.exit_code == 0, result.output
    assert "mean Frobenius retention" in result.output
    assert {m.rank for m in read_lora(tmp_path / "r.safetensors").modules.values()} == {2}
    result = runner.invoke(tools_app, ["lora-merge", f"{a}:0.5", f"{b}:-1", "--out", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 0, result.output
    merged = read_lora(tmp_path / "m.safetensors").modules["unet." + Q]
    la, lb = read_lora(a).modules["unet." + Q], read_lora(b).modules["unet." + Q]
    torch.testing.assert_close(_delta(merged, (32, 32)), 0.5 * _delta(la, (32, 32)) - _delta(lb, (32, 32)),
                               rtol=1e-5, atol=1e-4)
    result = runner.invoke(tools_app, ["lora-convert", str(a), "--out", str(tmp_path / "p.safetensors"),
                                       "--layout", "peft"])
    assert result.exit_code == 0, result.output
    assert read_lora(tmp_path / "p.safetensors") == read_lora(a)
    bad = runner.invoke(tools_app, ["lora-resize", str(a), "--out", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 2 and "give the new rank" in bad.output
