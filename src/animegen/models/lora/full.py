"""LyCORIS full-matrix difference (``algo=full``, native fine-tuning stored as a difference).

    ΔW = diff,   Δb = diff_b;   no rank, no alpha
"""

from __future__ import annotations

from animegen.models.lora.contract import as_stored, keys_matcher, no_rank, stored_difference, unit_scale

KIND = "full"
REQUIRED = frozenset({"diff"})
OPTIONAL = frozenset({"diff_b"})
NETWORK_MODULE = "lycoris.kohya"
LYCORIS_ALGO = "full"
matches = keys_matcher(REQUIRED, OPTIONAL)
rank = no_rank
scale = unit_scale
with_defaults = as_stored

delta, delta_bias = stored_difference("diff", "diff_b")
