"""LoRA surgery, as kohya sd-scripts' tools do it: extract, resize, merge and convert LoRAs.

Every tool factors a weight matrix the same way (`svd_factor`): ΔW flattened to (out, in·k·k),
``U S Vᵀ = svd(ΔW)``, keep r singular values, ``up = U_r S_r``, ``down = V_rᵀ`` (conv: `down` k×k, `up`
1×1, kohya's LoCon layout). Eckart–Young makes that the best rank-r approximation in the Frobenius
norm; the *retained energy* is the Frobenius fraction ``sqrt(Σ_{i<r} s_i² / Σ s_i²)`` (kohya's
"fro retained"), reported per module with the sum fraction ``Σ_{i<r} s_i / Σ s_i`` and ``s_0 / s_{r-1}``.

r is a fixed `rank`, or chosen per module as kohya's `resize_lora` `--dynamic_method` does, with `rank`
as the cap: ``sv_fro`` (smallest r whose retained energy reaches the parameter), ``sv_cumulative`` (same
on the sum of singular values), ``sv_ratio`` (keep s_i > s_0 / parameter). A zero matrix gets rank 1.
Unlike kohya, a rank is never raised above the module's own (extra directions would be zeros).

- `extract_lora(base, tuned)`: ΔW = tuned − base for kohya's LoRA targets (UNet attention blocks' Linear
  and 1×1 conv layers, text encoders' attention and MLP; with `conv_rank` also the ResNet and resampler
  layers, 3×3 convs at that rank); alpha = r, so the scale is 1 and the full rank reproduces ΔW.
  kohya's quantile clamp of the factors is not applied (it changes ΔW).
- `resize_lora(lora, rank)`: ΔW = up·down (the file's own scale s = alpha/rank kept: new alpha = s·r).
- `merge_loras(loras)`: Σ wᵢ·sᵢ·upᵢ·downᵢ per module, exactly by concatenating the factors (ranks add
  up, `merge_lora.py --concat`) or by SVD to `rank` (`svd_merge_lora.py`).
- `merge_lora_into_checkpoint(ckpt, loras)`: W + Σ wᵢ·ΔWᵢ by `apply_loras` (every algorithm, float32 sum,
  cast once), written in the checkpoint's layout and dtype.
- `convert_lora(lora, out, layout)`: kohya (``lora_unet_…``), peft/diffusers (``unet.….lora_A``), or the
  LyCORIS header (kohya keys, ``ss_network_module = lycoris.kohya`` with its ``algo``); tensors bit-exact.

Only plain LoRA/LoCon modules (``lora_down``/``lora_up``, no Tucker ``lora_mid``) can be resized or merged
into one LoRA; other algorithms are reported by name (merge them into a checkpoint instead).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from animegen.core.errors import AnimegenError
from animegen.models.lora import lora as lora_algorithm
from animegen.models.lora.formats import read_lora, write_lora
from animegen.models.lora.kohya_header import LYCORIS_NETWORK_MODULE
from animegen.models.lora.module import LoraFile, LoraModule
from animegen.models.lora.names import canonical_target

DynamicMethod = Literal["sv_fro", "sv_cumulative", "sv_ratio"]
DYNAMIC_METHODS: tuple[str, ...] = ("sv_fro", "sv_cumulative", "sv_ratio")
Layout = Literal["kohya", "peft", "lycoris"]
LAYOUTS: tuple[str, ...] = ("kohya", "peft", "lycoris")
MIN_SINGULAR_VALUE = 1e-6  # kohya's MIN_SV: below it a module is a zero matrix
_WRITER_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                "ss_base_model_version", "ss_v2", "sshs_model_hash", "sshs_legacy_hash", "format",
                "lora_adapter_metadata")


class LoraToolError(AnimegenError):
    """A LoRA tool asked for something the inputs cannot give (wrong kinds, ranks, layouts)."""


# ------------------------------------------------------------------------------------- the SVD


@dataclass(frozen=True)
class RankInfo:
    """One module's factorisation: the rank kept, its alpha and what of ΔW it retains."""

    rank: int
    alpha: float
    fro_retained: float  # sqrt(Σ kept s² / Σ s²): the retained energy
    sum_retained: float  # Σ kept s / Σ s
    max_ratio: float  # s_0 / s_(rank-1)


def select_rank(s: torch.Tensor, rank: int | None, method: DynamicMethod | None = None,
                param: float | None = None) -> int:
    """The rank kept of singular values `s` (descending): `rank`, or the dynamic `method` capped by `rank`."""
    n = int(s.numel())
    cap = n if rank is None else max(1, min(int(rank), n))
    if n == 0 or float(s[0]) <= MIN_SINGULAR_VALUE:
        return 1
    if method is None:
        if rank is None:
            raise LoraToolError("give a rank, or a dynamic method (sv_fro, sv_cumulative, sv_ratio) and its parameter")
        return cap
    if method not in DYNAMIC_METHODS:
        raise LoraToolError(f"unknown dynamic method {method!r}; choose {', '.join(DYNAMIC_METHODS)}")
    if param is None or param <= 0:
        raise LoraToolError(f"{method} needs a positive parameter (e.g. 0.9 for sv_fro), got {param!r}")
    s = s.double()
    if method == "sv_ratio":
        chosen = int((s > s[0] / param).sum())
    else:
        values, target = (s.pow(2), param ** 2) if method == "sv_fro" else (s, param)
        fraction = torch.cumsum(values, 0) / values.sum()
        chosen = int(torch.searchsorted(fraction, torch.tensor(target, dtype=fraction.dtype))) + 1
    return max(1, min(chosen, cap))


def rank_info(s: torch.Tensor, rank: int, scale: float = 1.0) -> RankInfo:
    """kohya's resize report for singular values `s` kept to `rank` (alpha = scale · rank)."""
    s = s.double()
    total_sq, total = float(s.pow(2).sum()), float(s.abs().sum())
    fro = (float(s[:rank].pow(2).sum()) / total_sq) ** 0.5 if total_sq > 0 else 1.0
    summed = float(s[:rank].abs().sum()) / total if total > 0 else 1.0
    ratio = float(s[0] / s[rank - 1]) if float(s[rank - 1]) > 0 else float("inf")
    return RankInfo(rank=rank, alpha=float(scale * rank), fro_retained=fro, sum_retained=summed, max_ratio=ratio)


def svd_factor(weight: torch.Tensor, rank: int | None, method: DynamicMethod | None = None,
               param: float | None = None, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, RankInfo]:
    """(up, down, info) with up·down the best rank-r approximation of `weight` (2-D, or a conv kernel)."""
    shape = weight.shape
    matrix = weight.float().reshape(shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = select_rank(s, rank, method, param)
    up = u[:, :r] * s[:r]
    down = vh[:r]
    if len(shape) == 4:
        up, down = up.reshape(shape[0], r, 1, 1), down.reshape(r, *shape[1:])
    return up.contiguous(), down.contiguous(), rank_info(s, r, scale)


# ---------------------------------------------------------------------------- LoRA modules


def _factors(module: LoraModule) -> tuple[torch.Tensor, torch.Tensor]:
    if module.kind != lora_algorithm.KIND or "lora_mid.weight" in module.tensors:
        what = "Tucker (lora_mid) LoCon" if module.kind == lora_algorithm.KIND else module.kind
        raise LoraToolError(f"{module.target} is a {what} module; only plain LoRA/LoCon modules can be resized or "
                            "merged into one LoRA (merge it into a checkpoint instead)")
    return module.tensors["lora_up.weight"], module.tensors["lora_down.weight"]


def lora_weight(module: LoraModule) -> torch.Tensor:
    """up·down of a plain LoRA module, unscaled, shaped as the layer's weight (conv: out, in, k, k)."""
    up, down = _factors(module)
    weight = up.float().flatten(1) @ down.float().flatten(1)
    return weight.reshape(up.shape[0], *down.shape[1:]) if down.dim() == 4 else weight


def _module(target: str, up: torch.Tensor, down: torch.Tensor, alpha: float, like: LoraModule | None = None,
            dtype: torch.dtype | None = None) -> LoraModule:
    dtype = dtype or (like.tensors["lora_down.weight"].dtype if like is not None else torch.float32)
    tensors = {"lora_up.weight": up.to(dtype).contiguous(), "lora_down.weight": down.to(dtype).contiguous()}
    if like is not None and "dora_scale" in like.tensors:
        tensors["dora_scale"] = like.tensors["dora_scale"]
    return LoraModule(target, lora_algorithm.KIND, tensors, alpha)


def _as_lora(item: LoraFile | str | Path) -> LoraFile:
    return item if isinstance(item, LoraFile) else read_lora(Path(item))


def resize_lora(lora: LoraFile | str | Path, rank: int | None = None, *, conv_rank: int | None = None,
                method: DynamicMethod | None = None, param: float | None = None
                ) -> tuple[LoraFile, dict[str, RankInfo]]:
    """`lora` at a new rank (kohya `resize_lora`); returns the LoRA and each module's `RankInfo`.

    `conv_rank` (default: `rank`) is for conv modules, as kohya's `--new_conv_rank`; with `method`,
    `rank` is the cap. Each module keeps its scale: new alpha = alpha/old rank · new rank.
    """
    if rank is None and method is None:
        raise LoraToolError("give the new rank, or a dynamic method (sv_fro, sv_cumulative, sv_ratio) and its "
                            "parameter")
    lf = _as_lora(lora)
    conv_rank = rank if conv_rank is None else conv_rank
    modules, report = {}, {}
    for target, m in lf.modules.items():
        weight = lora_weight(m)
        wanted = conv_rank if weight.dim() == 4 else rank
        cap = m.rank if wanted is None else min(wanted, m.rank)
        up, down, info = svd_factor(weight, cap, method, param, scale=m.scale)
        modules[target] = _module(target, up, down, info.alpha, like=m)
        report[target] = info
    return LoraFile(modules, dict(lf.metadata)), report


def merge_loras(loras: Iterable[tuple[LoraFile | str | Path, float]], *, rank: int | None = None,
                conv_rank: int | None = None, method: DynamicMethod | None = None, param: float | None = None
                ) -> tuple[LoraFile, dict[str, RankInfo]]:
    """One LoRA with ΔW = Σ wᵢ·ΔWᵢ: exact (factors concatenated) when no `rank`/`method`, else SVD-merged.

    The concatenated merge has alpha = its rank (scale 1); so does the SVD merge (`svd_merge_lora`).
    Returns the LoRA and, for SVD merges, each module's `RankInfo` (empty for concatenation).
    """
    loaded = [(_as_lora(item), float(w)) for item, w in loras]
    if not loaded:
        raise LoraToolError("give at least one LoRA to merge")
    targets = list(dict.fromkeys(t for lf, _ in loaded for t in lf.modules))
    conv_rank = rank if conv_rank is None else conv_rank
    modules, report = {}, {}
    for target in targets:
        parts = [(lf.modules[target], w) for lf, w in loaded if target in lf.modules]
        ups, downs = [], []
        for m, w in parts:
            up, down = _factors(m)
            ups.append(up.float() * (w * m.scale))
            downs.append(down.float())
        like = parts[0][0]
        if rank is None and method is None:
            up, down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
            modules[target] = _module(target, up, down, float(down.shape[0]), dtype=like.tensors["lora_down.weight"].dtype)
            continue
        total = sum(u.flatten(1) @ d.flatten(1) for u, d in zip(ups, downs))
        conv = downs[0].dim() == 4
        if conv:
            total = total.reshape(ups[0].shape[0], *downs[0].shape[1:])
        up, down, info = svd_factor(total, conv_rank if conv else rank, method, param)
        modules[target] = _module(target, up, down, float(info.rank), dtype=like.tensors["lora_down.weight"].dtype)
        report[target] = info
    return LoraFile(modules, {}), report


# -------------------------------------------------------------------------------- extraction


def _is_attention(path: str) -> bool:
    return ".attentions." in f".{path}"


def _is_conv_block(path: str) -> bool:
    return any(f".{part}." in f".{path}" for part in ("resnets", "downsamplers", "upsamplers"))


def _extract_targets(pipe, conv: bool) -> Iterable[tuple[str, torch.nn.Module, bool]]:
    """(target, layer, is a k×k conv) for kohya's LoRA (and, with `conv`, LoCon) targets."""
    from animegen.models.family import family_of

    for name, layer in pipe.unet.named_modules():
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        kxk = isinstance(layer, torch.nn.Conv2d) and layer.kernel_size != (1, 1)
        if (_is_attention(name) and not kxk) or (conv and _is_conv_block(name)):
            yield f"unet.{name}", layer, kxk
    for component in family_of(pipe).components:
        for name, layer in getattr(pipe, component).named_modules():
            if isinstance(layer, torch.nn.Linear) and (".self_attn." in name or ".mlp." in name):
                yield canonical_target(f"{component}.{name}"), layer, False


def _load(model):
    if isinstance(model, (str, Path)):
        from animegen.models.loading import load_pipeline

        return load_pipeline(model, device="cpu", dtype="float32")
    return model


def extract_lora(base, tuned, *, rank: int | None = None, energy: float | None = None,
                 conv_rank: int | None = None, min_diff: float = 0.0, dtype: torch.dtype = torch.float32
                 ) -> tuple[LoraFile, dict[str, RankInfo]]:
    """A LoRA approximating `tuned` − `base` (pipelines or model references), kohya `extract_lora_from_models`.

    `rank`: the rank (the cap when `energy` is given); `energy`: keep per module the smallest rank whose
    retained energy reaches it (``sv_fro``). `conv_rank` also extracts the ResNet/resampler layers (3×3
    convs at that rank). Modules whose largest |ΔW| is at most `min_diff` are left out (kohya's
    ``--min_diff``; 0 leaves out only unchanged ones). Returns the LoRA and each module's `RankInfo`.
    """
    if rank is None and energy is None:
        raise LoraToolError("give rank= (e.g. 32) and/or energy= (e.g. 0.95, the retained Frobenius fraction)")
    if energy is not None and not 0 < energy <= 1:
        raise LoraToolError(f"energy is a fraction in (0, 1], got {energy}")
    base, tuned = _load(base), _load(tuned)
    method = "sv_fro" if energy is not None else None
    tuned_layers = {t: layer for t, layer, _ in _extract_targets(tuned, conv_rank is not None)}
    modules, report = {}, {}
    with torch.no_grad():
        for target, layer, kxk in _extract_targets(base, conv_rank is not None):
            other = tuned_layers.get(target)
            if other is None or other.weight.shape != layer.weight.shape:
                raise LoraToolError(f"{target}: the tuned model has no layer of the base's shape; extract from "
                                    "a fine-tune of the same architecture")
            diff = other.weight.float() - layer.weight.float()
            if float(diff.abs().max()) <= min_diff:
                continue
            up, down, info = svd_factor(diff, conv_rank if kxk else rank, method, energy)
            info = RankInfo(info.rank, float(info.rank), info.fro_retained, info.sum_retained, info.max_ratio)
            modules[target] = _module(target, up, down, info.alpha, dtype=dtype)
            report[target] = info
    if not modules:
        raise LoraToolError("the two models do not differ in any LoRA target layer (more than min_diff)")
    return LoraFile(modules, {}), report


# ------------------------------------------------------------------------------ checkpoints


def _checkpoint_dtype(path: Path) -> torch.dtype:
    from safetensors import safe_open

    files = [path] if path.is_file() else sorted((path / "unet").glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 (not a dict)
                t = f.get_slice(key)
                if t.get_dtype() in ("F16", "BF16", "F32", "F64"):
                    return {"F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}.get(
                        t.get_dtype(), torch.float32)
    return torch.float32


def merge_lora_into_checkpoint(checkpoint: str | Path, loras: Iterable[tuple[LoraFile | str | Path,
                                                                             float | Mapping[str, float]]],
                               out: str | Path, *, dtype: torch.dtype | None = None) -> int:
    """Write `checkpoint` with W + Σ wᵢ·ΔWᵢ of each (LoRA, weight) to `out` (`.safetensors`: an A1111 single
    file; else a diffusers folder), in the checkpoint's dtype unless `dtype`. Returns the layers changed."""
    from animegen.core.files import atomic_dir
    from animegen.models.loading import load_pipeline
    from animegen.models.lora.apply import apply_loras
    from animegen.models.single_file import save_single_file

    checkpoint, out = Path(checkpoint), Path(out)
    if out.resolve() == checkpoint.resolve():
        raise LoraToolError(f"{out} is the input checkpoint; write the merge to a new path")
    dtype = dtype or _checkpoint_dtype(checkpoint)
    pipe = load_pipeline(checkpoint, device="cpu", dtype="float32")
    pipe.to(dtype)
    changed = apply_loras(pipe, [(_as_lora(item), w) for item, w in loras])
    if out.suffix.lower() == ".safetensors":
        save_single_file(pipe, out, dtype=dtype)
    else:
        with atomic_dir(out) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
    return changed


# -------------------------------------------------------------------------------- conversion


def _lycoris_header(header: Mapping[str, str], lf: LoraFile) -> dict[str, str]:
    """The kohya header turned LyCORIS's: network module lycoris.kohya, `algo` of the main kind."""
    from collections import Counter

    from animegen.models.lora.algorithms import ALGORITHMS

    main = Counter(m.kind for m in lf.modules.values()).most_common(1)[0][0]
    args = json.loads(header.get("ss_network_args", "{}"))
    args.setdefault("algo", ALGORITHMS[main].LYCORIS_ALGO)
    return {"ss_network_module": LYCORIS_NETWORK_MODULE, "ss_network_args": json.dumps(args)}


def convert_lora(lora: LoraFile | str | Path, out: str | Path, layout: Layout = "kohya", *,
                 sdxl: bool | None = None) -> Path:
    """Write `lora` in another `layout`: kohya, peft (diffusers keys) or lycoris (kohya keys, LyCORIS header).

    Tensors are written as they are (bit-exact); the source's training header keys (``ss_*``) are kept,
    the network keys are derived again for the new file.
    """
    from animegen.models.lora.formats import lora_to_state_dict

    if layout not in LAYOUTS:
        raise LoraToolError(f"unknown LoRA layout {layout!r}; choose {', '.join(LAYOUTS)}")
    lf = _as_lora(lora)
    kept = {k: v for k, v in lf.metadata.items() if k not in _WRITER_KEYS}
    fmt = "diffusers" if layout == "peft" else "kohya"
    if layout == "lycoris":
        _, header = lora_to_state_dict(lf, "kohya", sdxl=sdxl)
        kept |= _lycoris_header(header, lf)
    return write_lora(lf, out, format=fmt, metadata=kept, sdxl=sdxl)


__all__ = ["DYNAMIC_METHODS", "LAYOUTS", "LoraToolError", "RankInfo", "convert_lora", "extract_lora", "lora_weight",
           "merge_lora_into_checkpoint", "merge_loras", "rank_info", "resize_lora", "select_rank", "svd_factor"]
