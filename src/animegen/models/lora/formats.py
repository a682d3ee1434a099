"""Reading, detecting and writing LoRA files (kohya/A1111/LyCORIS and diffusers/peft layouts).

Detection is per key, so mixed files (e.g. kohya UNet keys next to LyCORIS ones) work. Every key
must be understood: keys that match no known layout are reported together in one error instead of
being silently dropped, which is how half-applied LoRAs happen.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from animegen.models.lora import full, ia3, loha, lokr, lora
from animegen.models.lora.module import LoraFile, LoraFormatError, LoraModule, detect_kind
from animegen.models.lora.names import (
    KOHYA_PREFIXES,
    canonical_target,
    is_ldm_unet_path,
    kohya_to_target,
    ldm_to_diffusers_unet,
    target_to_kohya,
)

Format = Literal["kohya", "diffusers"]

# diffusers' header key holding the per-component peft LoraConfig (rank/alpha patterns)
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"

_SUFFIXES = frozenset(lora.KEYS | loha.KEYS | lokr.KEYS | ia3.KEYS | full.KEYS | {"alpha", "dora_scale"})
# dotted (diffusers/peft) suffix -> canonical suffix; longest first so `.lora.down.weight` wins over `.weight`
_DOTTED_SUFFIXES = sorted(
    {".lora_A.weight": "lora_down.weight", ".lora_B.weight": "lora_up.weight",
     ".lora.down.weight": "lora_down.weight", ".lora.up.weight": "lora_up.weight",
     **{"." + s: s for s in _SUFFIXES}}.items(),
    key=lambda kv: -len(kv[0]))
_ATTN_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


# ----------------------------------------------------------------------------------- reading

def _split_kohya_key(key: str) -> tuple[str, str]:
    name, _, suffix = key.partition(".")
    if suffix not in _SUFFIXES:
        raise ValueError(f"unknown tensor suffix {suffix!r}")
    return kohya_to_target(name), suffix


def _split_dotted_key(key: str, all_keys) -> tuple[str, str]:
    m = _ATTN_PROCESSOR.match(key)  # old diffusers attention-processor LoRA
    if m:
        proj = "to_out.0" if m.group(2) == "to_out" else m.group(2)
        path, suffix = f"{m.group(1)}.{proj}", f"lora_{m.group(3)}.weight"
    else:
        for dotted, canonical in _DOTTED_SUFFIXES:
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
    for component in ("unet.", "text_encoder.", "text_encoder_2."):
        if path.startswith(component):
            return path, suffix
    if path.startswith("text_model."):
        return "text_encoder." + path, suffix
    if is_ldm_unet_path(path):
        path = ldm_to_diffusers_unet(path)
    return "unet." + path, suffix


def _split_key(key: str, all_keys) -> tuple[str, str]:
    if key.startswith(tuple(KOHYA_PREFIXES)):
        return _split_kohya_key(key)
    return _split_dotted_key(key, all_keys)


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
    for component in ("unet", "text_encoder", "text_encoder_2"):
        if f"{component}.r" in config or f"{component}.lora_alpha" in config:
            out[component] = (config.get(f"{component}.lora_alpha"),
                              config.get(f"{component}.alpha_pattern") or {})
    return out


def _pattern_alpha(path: str, default, patterns: dict):
    # peft's own matching rule (get_pattern_key); CLIP paths may be written without `text_model.`
    for candidate in dict.fromkeys((path, path.removeprefix("text_model."))):
        for pattern, value in patterns.items():
            if re.match(rf"(.*\.)?({pattern})$", candidate):
                return value
    return default


def lora_from_state_dict(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> LoraFile:
    """Parse a LoRA state dict in any supported layout into a `LoraFile`."""
    metadata = dict(metadata or {})
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        try:
            target, suffix = _split_key(key, state_dict)
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
        alpha_t = tensors.pop("alpha", None)
        try:
            kind = detect_kind(tensors)
        except LoraFormatError as exc:
            bad.append(f"{target}: {exc}")
            continue
        alpha = float(alpha_t.item()) if alpha_t is not None else None
        component, _, path = target.partition(".")
        if alpha is None and kind == "lora" and component in meta_alphas:
            alpha = _pattern_alpha(path, *meta_alphas[component])
        modules[target] = LoraModule(target, kind, dict(tensors), alpha)
    if bad:
        raise LoraFormatError("modules with unusable tensors: " + "; ".join(bad[:20]))
    if not modules:
        raise LoraFormatError("the file holds no LoRA tensors")
    return LoraFile(modules=modules, metadata=metadata)


def read_lora(path: str | Path) -> LoraFile:
    """Read any LoRA-family file (.safetensors; .pt/.ckpt/.bin loaded with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                state_dict = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        except Exception as exc:  # safetensors raises its own error types
            raise LoraFormatError(f"{path} is not a readable .safetensors file: {exc}") from exc
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LoraFormatError(f"{path} could not be loaded as a torch checkpoint: {exc}") from exc
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
            state_dict = state_dict["state_dict"]
        metadata = {}
    try:
        return lora_from_state_dict(state_dict, metadata)
    except LoraFormatError as exc:
        raise LoraFormatError(f"{path}: {exc}") from exc


# ----------------------------------------------------------------------------------- writing

def _meta_str(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _most_common(values, default=None):
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else default


def _payload_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensor payload (what `lora_hash` and kohya's `sshs_model_hash` cover)."""
    from safetensors.torch import save

    blob = save(tensors)
    header_len = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + header_len:]).hexdigest()


def _kohya_metadata(lf: LoraFile, sdxl: bool) -> dict[str, str]:
    kinds = {m.kind for m in lf.modules.values()}
    ranks = [m.rank for m in lf.modules.values()]
    alphas = [m.alpha if m.alpha is not None else m.rank for m in lf.modules.values()]
    derived = {
        "ss_network_module": "networks.lora" if kinds <= {"lora"} else "lycoris.kohya",
        "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1",
        "ss_v2": "False",
    }
    dim, alpha = _most_common(ranks), _most_common(alphas)
    if dim is not None:
        derived["ss_network_dim"] = str(dim)
    if alpha is not None:
        derived["ss_network_alpha"] = _meta_str(alpha)
    args: dict[str, str] = {}
    if not kinds <= {"lora"}:
        main_kind = _most_common([m.kind for m in lf.modules.values()])
        args["algo"] = "locon" if main_kind == "lora" else main_kind
    conv = [m for m in lf.modules.values() if next(iter(m.tensors.values())).dim() == 4]
    if conv and kinds <= {"lora"}:
        args["conv_dim"] = str(_most_common([m.rank for m in conv]))
        args["conv_alpha"] = _meta_str(_most_common([m.alpha if m.alpha is not None else m.rank for m in conv]))
    if args:
        derived["ss_network_args"] = json.dumps(args)
    return derived


def _diffusers_adapter_metadata(lf: LoraFile) -> dict:
    """peft LoraConfig per component so `pipe.load_lora_weights` uses our alphas (diffusers layout)."""
    config: dict = {}
    by_component: dict[str, list[LoraModule]] = defaultdict(list)
    for m in lf.modules.values():
        if m.kind == "lora":
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


@cache
def _clip_has_text_model_level(component: str) -> bool:
    """Whether the installed transformers' CLIP class for `component` nests a ``text_model``
    module (transformers 5 dropped it from `CLIPTextModel` but not from the projection variant);
    diffusers-layout keys must use the module paths peft will find."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
    config = CLIPTextConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                            num_attention_heads=1, max_position_embeddings=4, projection_dim=8)
    return hasattr(cls(config), "text_model")


def _diffusers_key_base(target: str) -> str:
    component, _, path = target.partition(".")
    if component.startswith("text_encoder") and path.startswith("text_model.") \
            and not _clip_has_text_model_level(component):
        return f"{component}.{path.removeprefix('text_model.')}"
    return target


def lora_to_state_dict(lf: LoraFile, format: Format = "kohya", *, sdxl: bool | None = None
                       ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and derived header of `lf` in `format` (see `write_lora`)."""
    sdxl = lf.is_sdxl if sdxl is None else sdxl
    tensors: dict[str, torch.Tensor] = {}
    for target, m in lf.modules.items():
        if format == "kohya":
            base = target_to_kohya(target, sdxl=sdxl)
            names = {s: f"{base}.{s}" for s in m.tensors}
        elif format == "diffusers":
            renamed = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}
            base = _diffusers_key_base(target)
            names = {s: f"{base}.{renamed.get(s, s)}" for s in m.tensors}
        else:
            raise ValueError(f"unknown LoRA format {format!r}: choose 'kohya' or 'diffusers'")
        for suffix, key in names.items():
            tensors[key] = m.tensors[suffix].detach().to("cpu").contiguous().clone()
        if m.alpha is not None and (format == "kohya" or m.kind != "lora"):
            tensors[f"{base}.alpha"] = torch.tensor(m.alpha, dtype=torch.float32)
    if format == "kohya":
        header = _kohya_metadata(lf, sdxl)
        header["sshs_model_hash"] = _payload_hash(tensors)
    else:
        header = {"format": "pt"}
        adapter = _diffusers_adapter_metadata(lf)
        if adapter:
            header[DIFFUSERS_METADATA_KEY] = json.dumps(adapter, indent=2, sort_keys=True)
    return tensors, header


def write_lora(lf: LoraFile, path: str | Path, format: Format = "kohya", metadata: dict | None = None,
               *, sdxl: bool | None = None) -> Path:
    """Write `lf` as .safetensors, atomically (temp file + os.replace).

    kohya: ``lora_unet_…``/``lora_te…`` keys (SDXL UNet in LDM names) with a kohya-style string
    header (ss_network_module/dim/alpha/args, ss_base_model_version, sshs_model_hash) overlaid by
    `metadata` (non-string values become JSON text, e.g. ss_tag_frequency).
    diffusers: ``unet.<module>.lora_A/B.weight`` keys plus the ``lora_adapter_metadata`` header
    that `pipe.load_lora_weights` reads its ranks/alphas from. Non-LoRA kinds keep their
    LyCORIS tensor names under the dotted module path. `sdxl` (default: guessed from the content
    and `lf.metadata`) picks kohya's SDXL naming.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors, header = lora_to_state_dict(lf, format, sdxl=sdxl)
    for key, value in (metadata or {}).items():
        header[str(key)] = _meta_str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------------- hashing

def lora_hash(path: str | Path) -> str:
    """A1111's short LoRA hash for infotext ``Lora hashes``: the first 12 hex digits of
    sha256 over the tensor payload after the safetensors header (`addnet_hash_safetensors`),
    or over the whole file for other formats."""
    path = Path(path)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            header_len = int.from_bytes(f.read(8), "little")
            f.seek(8 + header_len)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:12]


__all__ = ["lora_from_state_dict", "lora_hash", "lora_to_state_dict", "read_lora", "write_lora"]
