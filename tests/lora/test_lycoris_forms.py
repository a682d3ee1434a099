"""LyCORIS forms beyond the basic algorithms (issue #12 item 12), each merged by `apply_loras` and compared
with the delta written out by hand here: LoKr with a Tucker core on a conv, DoRA's weight decomposition
(`dora_scale`, as A1111's `apply_weight_decompose` and ComfyUI's `weight_decompose` merge it), and the
norm-layer modules a LoCon trained with `train_norm` carries (`w_norm`/`b_norm`, LyCORIS' NormModule)."""

from __future__ import annotations

import itertools

import torch
from lora_testutils import check_unet, kron, save_lora

from animegen.models.lora import read_lora, remove_loras

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # Linear 32 -> 32 in tiny SD1.5
CONV = "down_blocks.1.resnets.0.conv1"                             # Conv 32 -> 32, 3x3 in tiny SD1.5
NORM = "down_blocks.1.resnets.0.norm1"                             # GroupNorm(32 channels)
LN = "down_blocks.0.attentions.0.transformer_blocks.0.norm1"       # LayerNorm(32)
_SEED = itertools.count(100)


def _rand(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(next(_SEED))) * 0.1


def _kohya(path: str) -> str:
    return "lora_unet_" + path.replace(".", "_")


def test_lokr_with_a_tucker_core_on_a_conv(sd15, tmp_path):
    r, alpha = 2, 1.0
    w1, a, b, t = _rand(4, 4), _rand(r, 8), _rand(r, 8), _rand(r, r, 3, 3)  # LyCORIS: w2_a [rank, out]
    k = _kohya(CONV)
    path = save_lora(tmp_path, {f"{k}.lokr_w1": w1, f"{k}.lokr_w2_a": a, f"{k}.lokr_w2_b": b,
                                f"{k}.lokr_t2": t, f"{k}.alpha": torch.tensor(alpha)})
    w2 = torch.zeros(8, 8, 3, 3)
    for x in range(3):
        for y in range(3):
            w2[:, :, x, y] = a.T @ t[:, :, x, y] @ b  # w2[p, q] = Σ_ij a[i, p] t[i, j] b[j, q]
    check_unet(sd15, path, {CONV: kron(w1, w2) * (alpha / r)})


def _decomposed(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """DoRA by hand: V = W + ΔW, each slice along the magnitude's axis rescaled to its magnitude."""
    v = weight + delta
    out = torch.empty_like(v)
    per_input = magnitude.shape[0] == 1
    for i in range(v.shape[1] if per_input else v.shape[0]):
        part = v[:, i] if per_input else v[i]
        m = magnitude.flatten()[i]
        if per_input:
            out[:, i] = part * m / part.norm()
        else:
            out[i] = part * m / part.norm()
    return out - weight


def test_dora_per_input_linear_and_conv_and_per_output(sd15, tmp_path):
    r, alpha = 4, 2.0
    w_q, w_c = sd15.unet.get_submodule(Q).weight.detach().float(), sd15.unet.get_submodule(CONV).weight.detach().float()
    down, up, m_q = _rand(r, 32), _rand(32, r), 1.0 + _rand(1, 32)          # kohya/A1111: one magnitude per input
    c_down, c_up, m_c = _rand(r, 32, 3, 3), _rand(32, r, 1, 1), 1.0 + _rand(1, 32, 1, 1)
    ff = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
    w_k = sd15.unet.get_submodule(ff).weight.detach().float()
    k_down, k_up, m_k = _rand(r, 32), _rand(32, r), 1.0 + _rand(32, 1)      # peft/LyCORIS wd_on_out: per output
    q, c, k = _kohya(Q), _kohya(CONV), _kohya(ff)
    path = save_lora(tmp_path, {
        f"{q}.lora_down.weight": down, f"{q}.lora_up.weight": up, f"{q}.alpha": torch.tensor(alpha), f"{q}.dora_scale": m_q,
        f"{c}.lora_down.weight": c_down, f"{c}.lora_up.weight": c_up, f"{c}.dora_scale": m_c,
        f"{k}.lora_down.weight": k_down, f"{k}.lora_up.weight": k_up, f"{k}.dora_scale": m_k,
    })
    c_delta = (c_up.flatten(1) @ c_down.flatten(1)).reshape(32, 32, 3, 3)
    deltas = {Q: _decomposed(w_q, (up @ down) * (alpha / r), m_q), CONV: _decomposed(w_c, c_delta, m_c),
              ff: _decomposed(w_k, k_up @ k_down, m_k)}
    check_unet(sd15, path, deltas, atol=5e-5)
    remove_loras(sd15)
    check_unet(sd15, path, deltas, multiplier=0.5, atol=5e-5)  # A1111/ComfyUI: strength scales W' - W


def test_train_norm_modules_of_a_locon(sd15, tmp_path):
    r = 2
    down, up = _rand(r, 32), _rand(32, r)
    w_gn, b_gn, w_ln = _rand(32), _rand(32), _rand(32)
    q, gn, ln = _kohya(Q), _kohya(NORM), _kohya(LN)
    path = save_lora(tmp_path, {f"{q}.lora_down.weight": down, f"{q}.lora_up.weight": up,
                                f"{gn}.w_norm": w_gn, f"{gn}.b_norm": b_gn, f"{ln}.w_norm": w_ln})
    assert {m.kind for m in read_lora(path).modules.values()} == {"lora", "norm"}
    check_unet(sd15, path, {Q: up @ down, NORM: w_gn, LN: w_ln}, bias_deltas={NORM: b_gn})
