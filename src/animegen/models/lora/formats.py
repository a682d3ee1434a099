"""Reading, detecting and writing LoRA files (kohya/A1111/LyCORIS and diffusers/peft layouts).

Detection is per key, so mixed files (e.g. kohya UNet keys next to LyCORIS ones) work. Every key
must be understood: keys that match no known layout are reported together in one error instead of
being silently dropped, which is how half-applied LoRAs happen.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from animegen.core.files import WeightsFileError, atomic_path, read_weights, sha256_file
from animegen.core.tensors import non_finite
from animegen.models.family import SD1, SDXL, ModelFamily, family_of
from animegen.models.ldm_names import clip_class_has_text_model_level, text_path_for
from animegen.models.lora import lora
from animegen.models.lora.algorithms import tensor_suffixes
from animegen.models.lora.kohya_header import kohya_value, network_metadata
from animegen.models.lora.module import LoraFile, LoraFormatError, LoraModule, detect_kind
from animegen.models.lora.names import (
    COMPONENTS,
    KOHYA_PREFIXES,
    TEXT_COMPONENTS,
    canonical_target,
    is_ldm_unet_path,
    kohya_to_target,
    ldm_to_diffusers_unet,
    target_to_kohya,
)

Format = Literal["kohya", "diffusers"]

# diffusers' header key holding the per-component peft LoraConfig (rank/alpha patterns)
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"

# peft/diffusers names of LoRA's two factors (every other algorithm keeps its LyCORIS names when dotted)
_PEFT_LORA_SUFFIXES = {".lora_A.weight": "lora_down.weight", ".lora_B.weight": "lora_up.weight",
                       ".lora.down.weight": "lora_down.weight", ".lora.up.weight": "lora_up.weight"}


@cache
def _dotted_suffixes(suffixes: frozenset[str]) -> list[tuple[str, str]]:
    """dotted (diffusers/peft) suffix -> canonical suffix, for the registered algorithms' suffixes;
    longest first so `.lora.down.weight` wins over `.weight`."""
    return sorted({**_PEFT_LORA_SUFFIXES, **{"." + s: s for s in suffixes}}.items(), key=lambda kv: -len(kv[0]))


_ATTN_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


# ----------------------------------------------------------------------------------- reading

def _split_kohya_key(key: str, unet_config) -> tuple[str, str]:
    name, _, suffix = key.partition(".")
    if suffix not in tensor_suffixes():
        raise ValueError(f"unknown tensor suffix {suffix!r}")
    return kohya_to_target(name, unet_config=unet_config), suffix


def _split_dotted_key(key: str, all_keys, unet_config) -> tuple[str, str]:
    m = _ATTN_PROCESSOR.match(key)  # old diffusers attention-processor LoRA
    if m:
        proj = "to_out.0" if m.group(2) == "to_out" else m.group(2)
        path, suffix = f"{m.group(1)}.{proj}", f"lora_{m.group(3)}.weight"
    else:
        for dotted, canonical in _dotted_suffixes(tensor_suffixes()):
            if key.endswith(dotted):
                path, suffix = key[: -len(dotted)], canonical
                break
        else:
            raise ValueError("unknown tensor suffix")
        # a bare dotted `.weight` is IA3 only next to its `.on_input` flag; otherwise it is most
        # likely a model checkpoint passed as a LoRA, which must not be read as thousands of IA3s
        if suffix == "weight" and f"{path}.on_input" not in all_keys:
            raise ValueError("plain weight without on_input")
    path = path.removeprefix("base_model.model.")
    for component in COMPONENTS:
        if path.startswith(component + "."):
            return path, suffix
    if path.startswith("text_model."):
        return "text_encoder." + path, suffix
    if is_ldm_unet_path(path):
        path = ldm_to_diffusers_unet(path, unet_config)
    return "unet." + path, suffix


def _split_key(key: str, all_keys, unet_config) -> tuple[str, str]:
    if key.startswith(tuple(KOHYA_PREFIXES)):
        return _split_kohya_key(key, unet_config)
    return _split_dotted_key(key, all_keys, unet_config)


def _metadata_alphas(metadata: dict[str, str]) -> dict[str, tuple[object, dict]]:
    """Per component: (default lora_alpha, alpha_pattern) from diffusers' lora_adapter_metadata."""
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LoraFormatError(f"header {DIFFUSERS_METADATA_KEY!r} is not valid JSON: {exc}") from exc
    out = {}
    for component in COMPONENTS:
        if f"{component}.r" in config or f"{component}.lora_alpha" in config:
            out[component] = (config.get(f"{component}.lora_alpha"),
                              config.get(f"{component}.alpha_pattern") or {})
    return out


def _pattern_alpha(path: str, default, patterns: dict):
    # peft's own matching rule (get_pattern_key); CLIP paths may be written without `text_model.`
    for candidate in dict.fromkeys((path, text_path_for(path, has_level=False))):
        for pattern, value in patterns.items():
            if re.match(rf"(.*\.)?({pattern})$", candidate):
                return value
    return default


def lora_from_state_dict(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                         *, unet_config=None) -> LoraFile:
    """Parse a LoRA state dict in any supported layout into a `LoraFile`.

    LDM-named UNet keys (kohya SDXL) are translated by `unet_config`, the model's, when the caller has
    it; else by the released layouts (`names.ldm_to_diffusers_unet`), which every SD1/SDXL model shares.
    """
    metadata = dict(metadata or {})
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        try:
            target, suffix = _split_key(key, state_dict, unet_config)
            target = canonical_target(target)
        except ValueError:
            unknown.append(key)
            continue
        if suffix in groups[target]:
            raise LoraFormatError(f"two keys in the file map to {target}.{suffix} (e.g. {key!r})")
        groups[target][suffix] = tensor
    if unknown:
        shown = ", ".join(unknown[:20]) + (f" … and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        raise LoraFormatError(f"{len(unknown)} key(s) are not in any known LoRA layout: {shown}")
    meta_alphas = _metadata_alphas(metadata)
    modules: dict[str, LoraModule] = {}
    bad: list[str] = []
    for target, tensors in groups.items():
        damaged = sorted(non_finite(tensors))
        if damaged:  # merged, they turn every image black
            bad.append(f"{target}: non-finite values (NaN/inf) in {', '.join(damaged)}")
            continue
        alpha_t = tensors.pop("alpha", None)
        try:
            kind = detect_kind(tensors)
        except LoraFormatError as exc:
            bad.append(f"{target}: {exc}")
            continue
        alpha = float(alpha_t.item()) if alpha_t is not None else None
        component, _, path = target.partition(".")
        if alpha is None and kind == lora.KIND and component in meta_alphas:  # peft alphas: LoRA only
            alpha = _pattern_alpha(path, *meta_alphas[component])
        modules[target] = LoraModule(target, kind, dict(tensors), alpha)
    if bad:
        more = f"; … and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise LoraFormatError("modules with unusable tensors: " + "; ".join(bad[:20]) + more)
    if not modules:
        raise LoraFormatError("the file holds no LoRA tensors")
    return LoraFile(modules=modules, metadata=metadata)


def read_lora(path: str | Path, *, unet_config=None, allow_pickle: bool = False) -> LoraFile:
    """Read any LoRA-family file: .safetensors, or .pt/.ckpt/.bin only with `allow_pickle` (and then
    weights-only; the pickle policy of `core.files`). `unet_config`: see `lora_from_state_dict`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        state_dict, metadata = read_weights(path, allow_pickle=allow_pickle)
    except WeightsFileError as exc:
        raise LoraFormatError(str(exc)) from None
    try:
        return lora_from_state_dict(state_dict, metadata, unet_config=unet_config)
    except LoraFormatError as exc:
        raise LoraFormatError(f"{path}: {exc}") from exc


# ----------------------------------------------------------------------------------- writing

def _most_common(values, default=None):
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else default


def _payload_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensor payload (what `lora_hash` and kohya's `sshs_model_hash` cover)."""
    from safetensors.torch import save

    blob = save(tensors)
    header_len = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + header_len:]).hexdigest()


def _kohya_metadata(lf: LoraFile, family: ModelFamily) -> dict[str, str]:
    """kohya's network keys, derived from the modules: the most common rank/alpha (kohya has one)."""
    conv = [m for m in lf.modules.values() if next(iter(m.tensors.values())).dim() == 4]
    return network_metadata(
        kinds={m.kind for m in lf.modules.values()},
        main_kind=_most_common([m.kind for m in lf.modules.values()]),
        dim=_most_common([m.rank for m in lf.modules.values()]),
        alpha=_most_common([m.alpha if m.alpha is not None else m.rank for m in lf.modules.values()]),
        conv_dim=_most_common([m.rank for m in conv]),
        conv_alpha=_most_common([m.alpha if m.alpha is not None else m.rank for m in conv]),
        dora=any("dora_scale" in m.tensors for m in lf.modules.values()),
        family=family, v_prediction=lf.metadata.get("ss_v_parameterization") == "True")


def _diffusers_adapter_metadata(lf: LoraFile) -> dict:
    """peft LoraConfig per component so `pipe.load_lora_weights` uses our alphas (diffusers layout)."""
    config: dict = {}
    by_component: dict[str, list[LoraModule]] = defaultdict(list)
    for m in lf.modules.values():
        if m.kind == lora.KIND:
            by_component[m.component].append(m)
    for component, mods in by_component.items():
        r = _most_common([m.rank for m in mods])
        config[f"{component}.r"] = r
        config[f"{component}.lora_alpha"] = r
        paths = {m.target: _diffusers_key_base(m.target).partition(".")[2] for m in mods}
        config[f"{component}.target_modules"] = sorted(paths.values())
        config[f"{component}.rank_pattern"] = {
            "^" + re.escape(paths[m.target]): m.rank for m in mods if m.rank != r}
        config[f"{component}.alpha_pattern"] = {
            "^" + re.escape(paths[m.target]): (m.alpha if m.alpha is not None else m.rank)
            for m in mods if (m.alpha if m.alpha is not None else m.rank) != r}
    return config


def _diffusers_key_base(target: str) -> str:
    """diffusers-layout keys use the module paths peft will find in the installed transformers' CLIP class."""
    component, _, path = target.partition(".")
    if component in TEXT_COMPONENTS:
        with_projection = component == SDXL.text_encoders[-1].component
        return f"{component}.{text_path_for(path, clip_class_has_text_model_level(with_projection))}"
    return target


def lora_to_state_dict(lf: LoraFile, format: Format = "kohya", *, sdxl: bool | None = None, unet_config=None
                       ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and derived header of `lf` in `format` (see `write_lora`)."""
    family = family_of(lf)
    if sdxl is not None and sdxl != family.is_sdxl:  # the caller's `sdxl` wins over the guess from the content
        family = SDXL if sdxl else SD1
    sdxl = family.is_sdxl
    tensors: dict[str, torch.Tensor] = {}
    for target, m in lf.modules.items():
        if format == "kohya":
            base = target_to_kohya(target, sdxl=sdxl, unet_config=unet_config)
            names = {s: f"{base}.{s}" for s in m.tensors}
        elif format == "diffusers":
            renamed = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}
            base = _diffusers_key_base(target)
            names = {s: f"{base}.{renamed.get(s, s)}" for s in m.tensors}
        else:
            raise ValueError(f"unknown LoRA format {format!r}: choose 'kohya' or 'diffusers'")
        for suffix, key in names.items():
            tensors[key] = m.tensors[suffix].detach().to("cpu").contiguous().clone()
        if m.alpha is not None and (format == "kohya" or m.kind != lora.KIND):
            tensors[f"{base}.alpha"] = torch.tensor(m.alpha, dtype=torch.float32)
    if format == "kohya":
        header = _kohya_metadata(lf, family)
        header["sshs_model_hash"] = _payload_hash(tensors)
    else:
        header = {"format": "pt"}
        adapter = _diffusers_adapter_metadata(lf)
        if adapter:
            header[DIFFUSERS_METADATA_KEY] = json.dumps(adapter, indent=2, sort_keys=True)
    return tensors, header


def write_lora(lf: LoraFile, path: str | Path, format: Format = "kohya", metadata: dict | None = None,
               *, sdxl: bool | None = None, unet_config=None) -> Path:
    """Write `lf` as .safetensors, atomically (`core.files.atomic_path`: the umask's mode, unique temp name).

    kohya: ``lora_unet_…``/``lora_te…`` keys (SDXL UNet in LDM names) with a kohya-style string
    header (ss_network_module/dim/alpha/args, ss_base_model_version, sshs_model_hash) overlaid by
    `metadata` (non-string values become JSON text, e.g. ss_tag_frequency).
    diffusers: ``unet.<module>.lora_A/B.weight`` keys plus the ``lora_adapter_metadata`` header
    that `pipe.load_lora_weights` reads its ranks/alphas from. Non-LoRA kinds keep their
    LyCORIS tensor names under the dotted module path. `sdxl` (default: guessed from the content
    and `lf.metadata`) picks kohya's SDXL naming; `unet_config` (the trained model's) its LDM UNet
    names, else the released SDXL layout.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors, header = lora_to_state_dict(lf, format, sdxl=sdxl, unet_config=unet_config)
    for key, value in (metadata or {}).items():
        header[str(key)] = kohya_value(value)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


# ----------------------------------------------------------------------------------- hashing

def lora_hash(path: str | Path) -> str:
    """A1111's short LoRA hash for infotext ``Lora hashes``: the first 12 hex digits of
    sha256 over the tensor payload after the safetensors header (`addnet_hash_safetensors`),
    or over the whole file for other formats; cached as every file hash (`core.files.sha256_file`)."""
    path = Path(path)
    return sha256_file(path, safetensors_payload=path.suffix == ".safetensors")[:12]


__all__ = ["lora_from_state_dict", "lora_hash", "lora_to_state_dict", "read_lora", "write_lora"]
