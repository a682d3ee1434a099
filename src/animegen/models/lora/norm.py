"""LyCORIS norm-layer difference (`NormModule`, trained with LoCon's ``train_norm``): the GroupNorm /
LayerNorm affine parameters a LoCon file may carry next to its LoRA modules.

    ΔW = w_norm,   Δb = b_norm;   no rank, no alpha (LyCORIS scales them by the multiplier only)
"""

from __future__ import annotations

from animegen.models.lora.contract import as_stored, keys_matcher, no_rank, stored_difference, unit_scale

KIND = "norm"
REQUIRED = frozenset({"w_norm"})
OPTIONAL = frozenset({"b_norm"})
NETWORK_MODULE = "lycoris.kohya"
LYCORIS_ALGO = "norm"
matches = keys_matcher(REQUIRED, OPTIONAL)
rank = no_rank
scale = unit_scale
with_defaults = as_stored

delta, delta_bias = stored_difference("w_norm", "b_norm")
