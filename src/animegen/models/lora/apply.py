"""Merging LoRAs into a pipeline's weights, A1111 style, and undoing it bit-exactly.

W ← W + Σᵢ mᵢ·ΔWᵢ, summed in float32 and cast back once, so the result is linear in each
multiplier and m = 0 leaves a layer untouched. The original tensors are kept (per pipeline) so
`remove_loras` restores them exactly and every `apply_loras` call starts from the base weights.
Both refresh fused attention projections (`fused.py`) themselves, so callers never sync.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from animegen.core.errors import AnimegenError
from animegen.models.lora.formats import read_lora
from animegen.models.lora.fused import sync_fused_projections
from animegen.models.lora.module import LoraFile, LoraFormatError
from animegen.models.lora.names import COMPONENTS, TEXT_COMPONENTS, module_path_candidates, split_target

_BACKUP_ATTR = "_animegen_lora_backup"


class LoraTargetError(LoraFormatError):
    """LoRA modules that name layers the model does not have (wrong base model family?)."""


def _backup(pipe) -> dict[int, tuple[torch.nn.Parameter, torch.Tensor]]:
    backup = pipe.__dict__.get(_BACKUP_ATTR)
    if backup is None:
        backup = {}
        object.__setattr__(pipe, _BACKUP_ATTR, backup)
    return backup


def _resolve(pipe, target: str) -> torch.nn.Module | None:
    component, path = split_target(target)
    root = getattr(pipe, component, None)
    if not isinstance(root, torch.nn.Module):
        return None
    for candidate in module_path_candidates(root, path):
        try:
            module = root.get_submodule(candidate)
        except AttributeError:
            continue
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            return module
    return None


def _as_lora_file(item) -> LoraFile:
    return item if isinstance(item, LoraFile) else read_lora(Path(item))


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_multiplier(multiplier) -> float | dict[str, float]:
    """A LoRA multiplier, checked and normalised: a finite number, or finite numbers per component
    (A1111's te/unet split, ``{"text_encoder": te, "unet": unet}``). The one definition every front end
    (requests, prompt tags) and `apply_loras` use; a NaN weight would blacken every image."""
    if _is_number(multiplier):
        value = float(multiplier)
    elif isinstance(multiplier, Mapping) and multiplier and all(_is_number(v) for v in multiplier.values()):
        unknown = sorted(set(multiplier) - set(COMPONENTS))
        if unknown:
            raise AnimegenError(f"LoRA multiplier names unknown component(s) {unknown}: use "
                                f"{', '.join(COMPONENTS)}")
        value = {str(k): float(v) for k, v in multiplier.items()}
    else:
        raise AnimegenError(f"LoRA weight must be a number or {{'text_encoder': te, 'unet': unet}}, "
                            f"got {multiplier!r}")
    if not all(math.isfinite(v) for v in (value.values() if isinstance(value, dict) else [value])):
        raise AnimegenError(f"LoRA weight {multiplier!r} is not a finite number; give e.g. 0.8")
    return value


def _component_multipliers(multiplier: float | Mapping[str, float]) -> Callable[[str], float]:
    """Multiplier per module target: one float for all, or A1111's te/unet split as {component: float}.

    ``text_encoder`` also covers ``text_encoder_2`` unless that is given; a component left out is not merged.
    """
    multiplier = check_multiplier(multiplier)
    if not isinstance(multiplier, dict):
        return lambda target: multiplier
    per = {c: multiplier.get(c, multiplier.get("text_encoder", 0.0) if c in TEXT_COMPONENTS else 0.0)
           for c in COMPONENTS}
    return lambda target: per[split_target(target)[0]]


def apply_loras(pipe, loras: Iterable[tuple[LoraFile | str | Path, float | Mapping[str, float]]], *,
                progress: bool = False) -> int:
    """Merge ``multiplier * ΔW`` of every (LoraFile or path, multiplier) into `pipe`'s weights.

    A multiplier is a float or a {component: float} mapping such as ``{"text_encoder": 0.5, "unet": 1.0}``
    (A1111's `<lora:name:te:unet>`).

    Any LoRA already merged by this function is removed first (`remove_loras`), so calls do not
    stack; fused QKV copies are refreshed after the merge. Raises `LoraTargetError` listing every
    module no component of `pipe` has (nothing is merged then). Returns the number of layers changed.
    """
    remove_loras(pipe)
    loaded: Sequence[tuple[LoraFile, Callable[[str], float]]] = [
        (_as_lora_file(lf), _component_multipliers(m)) for lf, m in loras]
    missing = sorted({t for lf, _ in loaded for t in lf.modules if _resolve(pipe, t) is None})
    if missing:
        shown = ", ".join(missing[:20]) + (f" … and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise LoraTargetError(
            f"{len(missing)} LoRA module(s) match no layer of this model (is the LoRA for another "
            f"base model, e.g. SD1.x vs SDXL?): {shown}")

    # Sum the deltas per layer first (float32) so several LoRAs on one layer cast only once.
    deltas: dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]] = {}
    work = [(lf.modules[t], m(t)) for lf, m in loaded for t in lf.modules if m(t) != 0.0]
    with torch.no_grad():
        for module, multiplier in tqdm(work, desc="merging LoRA", disable=not progress, unit="layer"):
            layer = _resolve(pipe, module.target)
            dw = module.delta_weight(layer.weight.detach())
            dw = dw.to(layer.weight.device) * multiplier
            bias = getattr(layer, "bias", None)
            db = module.delta_bias(bias if isinstance(bias, torch.Tensor) else None)
            db = None if db is None else db.to(layer.weight.device) * multiplier
            if module.target in deltas:
                _, prev_w, prev_b = deltas[module.target]
                dw = prev_w + dw
                db = prev_b if db is None else (db if prev_b is None else prev_b + db)
            deltas[module.target] = (layer, dw, db)

        backup = _backup(pipe)
        for layer, dw, db in deltas.values():
            for param, d in ((layer.weight, dw), (getattr(layer, "bias", None), db)):
                if d is None:
                    continue
                if id(param) not in backup:
                    backup[id(param)] = (param, param.detach().to("cpu", copy=True))
                param.copy_((param.float() + d).to(param.dtype))
    if deltas:
        sync_fused_projections(pipe)
    return len(deltas)


def remove_loras(pipe) -> int:
    """Restore every weight changed by `apply_loras` bit-exactly (fused QKV copies too); returns
    how many tensors were restored."""
    backup = pipe.__dict__.get(_BACKUP_ATTR) or {}
    with torch.no_grad():
        for param, original in backup.values():
            param.copy_(original)
    restored = len(backup)
    backup.clear()
    if restored:
        sync_fused_projections(pipe)
    return restored


def applied_lora_count(pipe) -> int:
    """How many tensors of `pipe` currently hold merged LoRA weights."""
    return len(pipe.__dict__.get(_BACKUP_ATTR) or {})
