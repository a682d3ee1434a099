"""Key <-> module-path mapping for LoRA files.

Every LoRA module is named inside animegen by its *target*: the component-prefixed diffusers module
path (``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``,
``text_encoder.text_model.encoder.layers.0.self_attn.q_proj``, ``text_encoder_2....``). Files name
modules differently:

* kohya / A1111 / LyCORIS: ``lora_unet_`` / ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` + the module
  path with ``.`` replaced by ``_``. SD1.x files use diffusers UNet names; SDXL files use the
  LDM/SGM UNet names (``input_blocks_4_1_...``), so those are translated here.
* diffusers / peft: dotted paths, optionally prefixed by the component or ``base_model.model.``.

Turning ``_`` back into ``.`` is ambiguous (``to_q`` vs ``to.q``), so known multi-word module names
are re-joined greedily; anything left that does not exist in the model is reported by `apply_loras`.
LDM UNet names are translated by `ldm_names` from a UNet config: the model's own when the caller has
the model (``unet_config=``), else the shipped released layout of the family (a file read on its own
has no model; every released SD1/SDXL UNet has that layout, so the names are the same).
"""

from __future__ import annotations

from animegen.models.family import FAMILIES, SD1, SDXL
from animegen.models.ldm_names import (
    TEXT_MODEL_LEVEL,
    canonical_text_path,
    has_text_model_level,
    text_path_for,
    unet_path_from_ldm,
    unet_path_to_ldm,
)

TEXT_COMPONENTS = tuple(dict.fromkeys(te.component for f in FAMILIES.values() for te in f.text_encoders))
COMPONENTS = ("unet", *TEXT_COMPONENTS)

# kohya key prefix -> component, longest first (`lora_te1_` before `lora_te_`)
KOHYA_PREFIXES = dict(sorted(
    {"lora_unet_": "unet", **{te.kohya_prefix: te.component for f in FAMILIES.values() for te in f.text_encoders}
     }.items(), key=lambda kv: -len(kv[0])))

# Module names that contain underscores, in diffusers UNet, LDM UNet and CLIP text encoders.
_COMPOUND_NAMES = frozenset({
    # diffusers UNet
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "proj_in", "proj_out",
    "to_q", "to_k", "to_v", "to_out", "add_k_proj", "add_v_proj", "conv_shortcut", "time_emb_proj",
    "time_embedding", "linear_1", "linear_2", "conv_in", "conv_out", "conv_norm_out",
    "add_embedding", "class_embedding", "encoder_hid_proj", "norm_out",
    # LDM / SGM UNet
    "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "emb_layers",
    "in_layers", "out_layers", "skip_connection",
    # CLIP text encoders (transformers naming)
    "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "layer_norm1",
    "layer_norm2", "final_layer_norm", "token_embedding", "position_embedding", "text_projection",
})
_MAX_COMPOUND = max(name.count("_") + 1 for name in _COMPOUND_NAMES)

_LDM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")


def underscored_to_dotted(name: str) -> str:
    """``down_blocks_0_attentions_0_proj_in`` -> ``down_blocks.0.attentions.0.proj_in``."""
    tokens = name.split("_")
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        for width in range(min(_MAX_COMPOUND, len(tokens) - i), 1, -1):
            joined = "_".join(tokens[i:i + width])
            if joined in _COMPOUND_NAMES:
                parts.append(joined)
                i += width
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)


def is_ldm_unet_path(path: str) -> bool:
    """True for UNet module paths in LDM/SGM naming (``input_blocks.4.1...``)."""
    return path.startswith(_LDM_ROOTS)


def _through_layouts(convert, path: str, unet_config) -> str:
    """`convert(path, config)` by the model's `unet_config`; without one (a file read on its own) by the
    shipped SDXL layout, then SD1's for names only SD1 has (where both have a name they agree on it)."""
    configs = [unet_config] if unet_config is not None else [SDXL.config("unet"), SD1.config("unet")]
    for config in configs:
        try:
            return convert(path, config)
        except ValueError:
            continue
    raise ValueError(f"unknown UNet module path {path!r} (not in the {'given' if unet_config is not None else 'SDXL or SD1'} "
                     "UNet layout)")


def ldm_to_diffusers_unet(path: str, unet_config=None) -> str:
    """Translate an LDM/SGM UNet module path to the diffusers one (ValueError if unknown)."""
    return _through_layouts(unet_path_from_ldm, path, unet_config)


def diffusers_to_ldm_unet(path: str, unet_config=None) -> str:
    """Translate a diffusers UNet module path to LDM/SGM naming (ValueError if unknown)."""
    return _through_layouts(unet_path_to_ldm, path, unet_config)


def kohya_to_target(name: str, *, unet_config=None) -> str:
    """``lora_unet_input_blocks_4_1_proj_in`` -> ``unet.down_blocks.1.attentions.0.proj_in``
    (LDM UNet names through `ldm_to_diffusers_unet`, with the model's `unet_config` if one is given)."""
    for prefix, component in KOHYA_PREFIXES.items():
        if name.startswith(prefix):
            path = underscored_to_dotted(name[len(prefix):])
            if component == "unet" and is_ldm_unet_path(path):
                path = ldm_to_diffusers_unet(path, unet_config)
            return f"{component}.{path}"
    raise ValueError(f"{name!r} has no kohya prefix ({', '.join(KOHYA_PREFIXES)})")


def target_to_kohya(target: str, *, sdxl: bool, unet_config=None) -> str:
    """Inverse of `kohya_to_target`; SDXL UNet modules get LDM names as kohya writes them (by the
    model's `unet_config` when given, else the shipped SDXL layout)."""
    family = SDXL if sdxl else SD1
    component, _, path = target.partition(".")
    if component == "unet":
        if family.kohya_unet_names == "ldm":
            path = diffusers_to_ldm_unet(path, unet_config)
        prefix = "lora_unet_"
    elif component in family.components:
        prefix = family.text_encoder(component).kohya_prefix
    else:
        raise ValueError(f"target {target!r} does not start with one of {family.components + ('unet',)}")
    return prefix + path.replace(".", "_")


def split_target(target: str) -> tuple[str, str]:
    """``unet.a.b`` -> (``unet``, ``a.b``); raises ValueError for unknown components."""
    component, _, path = target.partition(".")
    if component not in COMPONENTS or not path:
        raise ValueError(f"target {target!r} must start with one of {COMPONENTS}")
    return component, path


def canonical_target(target: str) -> str:
    """Name CLIP text-encoder modules with the ``text_model.`` level, as kohya files and older
    transformers do (`ldm_names.canonical_text_path`)."""
    component, _, path = target.partition(".")
    if component in TEXT_COMPONENTS:
        return f"{component}.{canonical_text_path(path)}"
    return target


def module_path_candidates(component_module, path: str) -> list[str]:
    """Paths to try inside a component: the canonical one as this module names it (without
    ``text_model.`` for transformers >= 5 `CLIPTextModel`)."""
    if path.startswith(TEXT_MODEL_LEVEL):
        return [text_path_for(path, has_text_model_level(component_module))]
    return [path]
