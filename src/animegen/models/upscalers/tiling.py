"""Tiled inference: an image of any size through an upscaler network in tiles whose size bounds the memory.

Contract of `tiled_forward(net, x, tile=192, overlap=8)`:

- The image (B, C, H, W) is first padded at the bottom/right to a multiple of `net.input_multiple`
  (reflect, as Real-ESRGAN's `pre_process` does; replicate where the image is too small to reflect), and the
  output cropped back to (H * scale, W * scale).
- `tile` <= 0 (or an image within one tile) runs the network once on the whole image.
- Otherwise the image is cut into a grid of `tile` x `tile` cores (the last row/column smaller). Each core is
  run with `overlap` pixels of real image context on every side that has any (clipped at the image edge),
  so the network never sees more than (tile + 2 * overlap) pixels per side, and only the core's part of the
  output is kept (Real-ESRGAN's `tile_process` layout). Tile and overlap are rounded up to the input
  multiple, so cores stay on the pixel-unshuffle grid.
- Where the network's receptive field (in input pixels) is within `overlap`, every kept output pixel saw
  exactly what it sees in the untiled forward: the result equals the untiled forward to float rounding, with
  no seams and no blending needed. RRDBNets see further than any practical overlap (23 blocks ≈ 350 pixels),
  so there tiles differ slightly near their borders, as in every tiled ESRGAN (A1111's ESRGAN defaults are
  tile 192, overlap 8).

Where we differ from A1111: its ESRGAN splits the image into overlapping tiles and blends the overlaps
linearly in Pillow; this keeps context instead, which is exact where the receptive field fits and never
averages two different predictions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from animegen.models.upscalers.contract import UpscalerFormatError

DEFAULT_TILE = 192
DEFAULT_OVERLAP = 8


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def tiled_forward(net, x: torch.Tensor, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                  finish: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """`net(x)` computed tile by tile (see the module docstring); `net` has `scale` and `input_multiple`.

    `finish` is applied to each tile's kept output before it is stored (e.g. clamp and convert to uint8), so
    the whole result is only ever held in its final dtype.
    """
    finish = finish or (lambda piece: piece)
    if overlap < 0:
        raise UpscalerFormatError(f"the tile overlap must be >= 0 pixels, got {overlap}")
    height, width = x.shape[-2:]
    multiple, scale = int(net.input_multiple), int(net.scale)
    x = _pad_to_multiple(x, multiple)
    padded_h, padded_w = x.shape[-2:]
    if tile <= 0 or (padded_h <= tile and padded_w <= tile):
        return finish(net(x)[..., : height * scale, : width * scale])
    tile, overlap = _round_up(tile, multiple), _round_up(overlap, multiple)
    out: torch.Tensor | None = None
    for top in range(0, padded_h, tile):
        bottom = min(top + tile, padded_h)
        ctx_top, ctx_bottom = max(top - overlap, 0), min(bottom + overlap, padded_h)
        for left in range(0, padded_w, tile):
            right = min(left + tile, padded_w)
            ctx_left, ctx_right = max(left - overlap, 0), min(right + overlap, padded_w)
            piece = net(x[..., ctx_top:ctx_bottom, ctx_left:ctx_right])
            dy, dx = (top - ctx_top) * scale, (left - ctx_left) * scale
            kept = finish(piece[..., dy: dy + (bottom - top) * scale, dx: dx + (right - left) * scale])
            if out is None:
                out = kept.new_zeros((*kept.shape[:-2], height * scale, width * scale))
            rows, cols = min(bottom, height) - top, min(right, width) - left  # the padding is not kept
            out[..., top * scale: top * scale + rows * scale, left * scale: left * scale + cols * scale] = \
                kept[..., : rows * scale, : cols * scale]
    assert out is not None  # the image has at least one pixel, so one tile ran
    return out


__all__ = ["DEFAULT_OVERLAP", "DEFAULT_TILE", "tiled_forward"]
