"""The NaN check: a generation whose latents or pixels hold NaN/inf is an error, never a saved black image.

A1111 does this with `devices.test_for_nans` (raising `NansException`) on the UNet's output and on the
VAE-decoded image, disabled by `--disable-nan-check`. We check the same two places, once per pass on
the final latents and once on the decoded pixels (one reduction each, nothing per step), and raise
`NonFiniteOutputError` naming the stage (`unet` or `vae`), the seeds and the likely fix. Disabled with
the one option `nan_check` (CLI `--no-nan-check`, serve TOML `nan_check = false`, `Generator(nan_check=False)`).

Where we deliberately differ from A1111:
- any NaN/inf fails, not only an all-NaN tensor: a partly NaN image is saved with black blotches too;
- the error says why: only once the check has fired, the stage's weights are scanned for non-finite
  tensors and the first ones are named (a damaged checkpoint), else a half-precision overflow is
  suggested. Scanning on failure costs a healthy load nothing, where a scan of every tensor at load
  would cost seconds per SDXL checkpoint on a CPU, and would refuse a checkpoint whose non-finite
  tensor no image ever reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from animegen.core.errors import AnimegenError
from animegen.core.tensors import non_finite

_SHOWN = 3  # non-finite weights named in a message


class NonFiniteOutputError(AnimegenError):
    """NaN/inf came out of the UNet (the denoised latents) or the VAE (the decoded pixels)."""

    def __init__(self, message: str, stage: str, seeds: list[int]):
        super().__init__(message)
        self.stage = stage
        self.seeds = seeds


def bad_rows(x) -> list[int]:
    """Indices along the first (batch) axis whose values are not all finite (one device sync)."""
    if x is None:
        return []
    if torch.is_tensor(x):
        finite = torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(dim=1).cpu().numpy()
    else:
        finite = np.isfinite(np.asarray(x).reshape(len(x), -1)).all(axis=1)
    return [i for i, ok in enumerate(finite) if not ok]


def check_output(pipe, latents, images, seeds: Sequence[int]) -> None:
    """Raise `NonFiniteOutputError` if `latents` (stage unet) or else `images` (stage vae) hold NaN/inf.

    `latents` are the final latents of the pass (None when no step ran), `images` the decoded batch;
    row i of either belongs to `seeds[i]`.
    """
    for stage, values in (("unet", latents), ("vae", images)):
        rows = bad_rows(values)
        if rows:
            bad_seeds = [int(seeds[i]) for i in rows if i < len(seeds)]
            raise NonFiniteOutputError(_message(pipe, stage, bad_seeds), stage, bad_seeds)


def non_finite_weights(pipe, stage: str) -> list[str]:
    """`component.tensor` names of the non-finite weights behind `stage` (the UNet and text encoders for
    unet, whose output is the latents; the VAE for vae)."""
    from animegen.models.family import family_of

    components = ("unet", *family_of(pipe).components) if stage == "unet" else ("vae",)
    found: list[str] = []
    for name in components:
        module = getattr(pipe, name, None)
        if module is not None:
            found += non_finite({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return found


def _dtype_name(dtype: torch.dtype) -> str:
    from animegen.models.loading import DTYPES

    return next((name for name, d in DTYPES.items() if d == dtype), str(dtype))


def _message(pipe, stage: str, seeds: list[int]) -> str:
    what = "the UNet denoised to NaN/inf latents" if stage == "unet" else "the VAE decoded NaN/inf pixels"
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    module = getattr(pipe, stage, None)
    dtype = next(module.parameters()).dtype if module is not None else torch.float32
    bad = non_finite_weights(pipe, stage)
    if bad:
        more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        where = f"non-finite weights in {', '.join(bad[:_SHOWN])}{more}"
        fix = ("the checkpoint (or a LoRA merged into it) is damaged: re-download or re-convert it"
               if stage == "unet" else "the VAE is damaged: pass a good one with --vae")
    elif dtype in (torch.float16, torch.bfloat16):
        where = f"the weights are finite, so {stage} overflowed in {_dtype_name(dtype)}"
        fix = ("try --dtype fp32" if stage == "unet" else
               "try --dtype fp32, or --vae with an fp16-safe VAE (e.g. sdxl-vae-fp16-fix)")
    else:
        where = "the weights are finite"
        fix = ("check the checkpoint and LoRAs (try without them, or another sampler)" if stage == "unet"
               else "check the checkpoint's VAE, or pass another with --vae")
    return (f"{what} for {which} ({stage}: {where}); {fix}. No image was returned "
            "(--no-nan-check / nan_check = false returns it anyway).")


__all__ = ["NonFiniteOutputError", "bad_rows", "check_output", "non_finite_weights"]
