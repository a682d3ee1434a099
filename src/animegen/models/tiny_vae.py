"""The tiny models' VAE: the real AutoencoderKL architecture, with weights set by hand to a linear codec.

A random-weight VAE is useless for tests that look at images: it maps every picture to nearly the same
latent (measured: red, blue, black and white squares all within 0.05 RMS of each other, while a
diffusion latent has unit scale), so a model "trained on red squares" cannot be told from one trained on
anything else. This one is exact instead. The encoder takes the mean colour of each 8x8 pixel block and
maps it through a fixed 3->4 colour matrix to the four latent channels; the decoder maps latents back
through the matrix's left inverse and repeats each value over its 8x8 block. So
`decode(encode(image))` is the block-averaged image, and a latent's colour can be read off directly.

How it is done in the real layers: every residual branch (ResNet `conv2`, attention `to_out`) is zero, so
the blocks pass their input through; the down-samplers average 2x2 and the up-samplers copy. The only
non-linear step left on the main path is GroupNorm + SiLU before each `conv_out`. Each signal sits in its
own GroupNorm group as a pair (s, -s) next to constant pairs (K, -K): the group mean is exactly 0 and its
variance is fixed by K up to (s/K)^2 ~ 1e-6, so the norm is a known scale, and a bias B moves SiLU into
its linear range (SiLU(B + s) = B + s to 1e-8). Needs at least 4 channels per GroupNorm group, as the
real VAEs have (128 channels / 32 groups).
"""

from __future__ import annotations

import torch

# Latent (4 channels, after the scaling factor) -> RGB in [-1, 1]. Shaped like the linear previews
# people use for SD latents: channels 0-1 carry brightness, 2 red against cyan, 3 blue against yellow.
LATENT_TO_RGB = torch.tensor([
    [0.35, 0.33, -0.28, -0.21],
    [0.23, 0.50, 0.18, -0.26],
    [0.32, 0.24, 0.27, -0.72],
])
_K = 100.0  # constant-pair value: makes each GroupNorm's statistics independent of the signal
_B = 24.0  # SiLU bias: SiLU(x) = x to ~1e-9 relative for x > 20
_LOGVAR = -30.0  # the posterior is a point: std exp(-15) ~ 3e-7


def rgb_to_latent_matrix() -> torch.Tensor:
    """RGB -> scaled latent (4x3): the least-norm left inverse of LATENT_TO_RGB."""
    return torch.linalg.pinv(LATENT_TO_RGB)


def _signal_groups(norm: torch.nn.GroupNorm, n_signals: int, width: int) -> list[int]:
    """The channel of each signal: the first of its own group; the group's other channels hold ±K."""
    size = norm.num_channels // norm.num_groups
    if size < 4 or size % 2 or norm.num_groups < n_signals or n_signals * size > width:
        raise ValueError(f"the linear tiny VAE needs GroupNorms with >= {n_signals} groups of an even number "
                         f">= 4 channels within the first {width}; got {norm.num_groups} groups of {size}")
    return [g * size for g in range(n_signals)]


def _constant_pairs(norm: torch.nn.GroupNorm, signals: list[int]) -> dict[int, float]:
    size = norm.num_channels // norm.num_groups
    out = {}
    for first in signals:
        for j in range(2, size):
            out[first + j] = _K if j % 2 == 0 else -_K
    return out


def _norm_as_identity(norm: torch.nn.GroupNorm, signals: list[int]) -> None:
    """Scale back what the norm divides by, and shift the signal into SiLU's linear range."""
    size = norm.num_channels // norm.num_groups
    std = _K * ((size - 2) / size) ** 0.5
    norm.weight.fill_(1.0)
    norm.bias.zero_()
    for c in signals:
        norm.weight[c], norm.bias[c] = std, _B


def _center(conv: torch.nn.Conv2d, matrix: torch.Tensor) -> None:
    """Make a 3x3 (or 1x1) conv act per pixel as `matrix` (out x in)."""
    conv.weight.zero_()
    k = conv.weight.shape[-1] // 2
    conv.weight[:, :, k, k] = matrix
    if conv.bias is not None:
        conv.bias.zero_()


def _pass_through(module: torch.nn.Module) -> None:
    """Zero every residual branch; make shortcuts identities, down-samplers 2x2 means, up-samplers copies."""
    for name, sub in module.named_modules():
        if name.endswith("conv2") or name.endswith("to_out.0"):
            sub.weight.zero_()
            sub.bias.zero_()
        elif name.endswith("conv_shortcut"):
            _center(sub, torch.eye(*sub.weight.shape[:2]))
        elif name.endswith("downsamplers.0.conv"):
            sub.weight.zero_()
            sub.bias.zero_()
            for c in range(sub.weight.shape[0]):
                sub.weight[c, c, :2, :2] = 0.25
        elif name.endswith("upsamplers.0.conv"):
            _center(sub, torch.eye(*sub.weight.shape[:2]))


def _carry(coder, n_signals: int, width: int, to_signal: torch.Tensor, out_scale: float) -> None:
    """Route `to_signal @ input` (per pixel) from `conv_in` through the final GroupNorm + SiLU to the
    first outputs of `conv_out`, multiplied by `out_scale`."""
    norm = coder.conv_norm_out
    signals = _signal_groups(norm, n_signals, width)
    m = torch.zeros(coder.conv_in.out_channels, coder.conv_in.in_channels)
    for i, c in enumerate(signals):
        m[c], m[c + 1] = to_signal[i], -to_signal[i]
    _center(coder.conv_in, m)
    for c, value in _constant_pairs(norm, signals).items():
        coder.conv_in.bias[c] = value
    _norm_as_identity(norm, signals)
    m = torch.zeros(coder.conv_out.out_channels, coder.conv_out.in_channels)
    for i, c in enumerate(signals):
        m[i, c] = out_scale
    _center(coder.conv_out, m)
    coder.conv_out.bias[:n_signals] = -_B * out_scale


def make_linear_codec(vae) -> None:
    """Set a diffusers AutoencoderKL (3 down-samplers, 4 latent channels) to the exact linear codec."""
    sf = float(vae.config.scaling_factor)
    if len(vae.config.block_out_channels) != 4 or vae.config.latent_channels != 4:
        raise ValueError("the linear tiny VAE needs 4 levels (8x) and 4 latent channels")
    enc, dec = vae.encoder, vae.decoder
    with torch.no_grad():
        for part in (enc, dec):
            _pass_through(part)
        # encoder: the signal is the scaled latent; conv_out divides by the scaling factor
        _carry(enc, 4, enc.conv_in.out_channels, rgb_to_latent_matrix(), 1.0 / sf)
        enc.conv_out.bias[4:] = _LOGVAR
        _center(vae.quant_conv, torch.eye(8))
        _center(vae.post_quant_conv, torch.eye(4))
        # decoder: the signal is RGB in [-1, 1], from the raw latent times the scaling factor
        _carry(dec, 3, dec.conv_norm_out.num_channels, LATENT_TO_RGB * sf, 1.0)
