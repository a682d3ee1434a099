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
The LDM mapping here assumes ``layers_per_block=2`` (true for every SD1.x/SD2/SDXL UNet).
"""

from __future__ import annotations

import re

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te_": "text_encoder",
}

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

LAYERS_PER_BLOCK = 2

_RESNET_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_RESNET_FROM_LDM = {v: k for k, v in _RESNET_TO_LDM.items()}


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


def _map_resnet_from_ldm(rest: str) -> str:
    for ldm, diffusers in _RESNET_FROM_LDM.items():
        if rest == ldm or rest.startswith(ldm + "."):
            return diffusers + rest[len(ldm):]
    return rest


def _map_resnet_to_ldm(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head in _RESNET_TO_LDM:
        return _RESNET_TO_LDM[head] + ("." + tail if tail else "")
    return rest


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def ldm_to_diffusers_unet(path: str) -> str:
    """Translate an LDM/SGM UNet module path to the diffusers one (raises ValueError if unknown)."""
    per = LAYERS_PER_BLOCK + 1
    fixed = {
        "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
        "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
        "out.0": "conv_norm_out", "out.2": "conv_out", "input_blocks.0.0": "conv_in",
    }
    if path in fixed:
        return fixed[path]
    m = re.fullmatch(r"(input_blocks|output_blocks|middle_block)\.(\d+)(?:\.(\d+))?(?:\.(.+))?", path)
    if not m:
        raise ValueError(f"unknown LDM UNet module path {path!r}")
    root, a, b, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4) or ""
    if root == "middle_block":
        # middle_block.N.<rest>: b is actually the first element of rest
        rest = _join(b or "", rest)
        if a == 1:
            return _join("mid_block.attentions.0", rest)
        if a in (0, 2):
            return _join(f"mid_block.resnets.{a // 2}", _map_resnet_from_ldm(rest))
        raise ValueError(f"unknown LDM UNet module path {path!r}")
    if b is None:
        raise ValueError(f"unknown LDM UNet module path {path!r}")
    b = int(b)
    if root == "input_blocks":
        if a % per == 0:  # downsampler slot
            if b == 0 and (rest == "op" or rest.startswith("op.")):
                return _join(f"down_blocks.{a // per - 1}.downsamplers.0", "conv" + rest[2:])
            raise ValueError(f"unknown LDM UNet module path {path!r}")
        block, layer = (a - 1) // per, (a - 1) % per
        if b == 0:
            return _join(f"down_blocks.{block}.resnets.{layer}", _map_resnet_from_ldm(rest))
        if b == 1:
            return _join(f"down_blocks.{block}.attentions.{layer}", rest)
        raise ValueError(f"unknown LDM UNet module path {path!r}")
    block, layer = a // per, a % per
    if b == 0:
        return _join(f"up_blocks.{block}.resnets.{layer}", _map_resnet_from_ldm(rest))
    if b == 2 or (b == 1 and (rest == "conv" or rest.startswith("conv."))):
        return _join(f"up_blocks.{block}.upsamplers.0", rest)
    if b == 1:
        return _join(f"up_blocks.{block}.attentions.{layer}", rest)
    raise ValueError(f"unknown LDM UNet module path {path!r}")


def diffusers_to_ldm_unet(path: str, up_block_has_attention=lambda block: block < 2) -> str:
    """Translate a diffusers UNet module path to LDM/SGM naming.

    `up_block_has_attention(i)` decides whether an upsampler sits at index 2 (after an attention)
    or 1; the default matches SDXL, the only family whose kohya files use LDM names.
    """
    per = LAYERS_PER_BLOCK + 1
    fixed = {
        "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
        "conv_norm_out": "out.0", "conv_out": "out.2", "conv_in": "input_blocks.0.0",
    }
    if path in fixed:
        return fixed[path]
    m = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)"
                     r"\.(\d+)(?:\.(.+))?", path)
    if m:
        root, block, kind, layer, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5) or ""
        if root == "down_blocks":
            if kind == "downsamplers":
                return _join(f"input_blocks.{per * (block + 1)}.0", "op" + rest[4:] if rest.startswith("conv") else rest)
            n = per * block + layer + 1
            if kind == "resnets":
                return _join(f"input_blocks.{n}.0", _map_resnet_to_ldm(rest))
            if kind == "attentions":
                return _join(f"input_blocks.{n}.1", rest)
        else:
            if kind == "upsamplers":
                slot = 2 if up_block_has_attention(block) else 1
                return _join(f"output_blocks.{per * block + LAYERS_PER_BLOCK}.{slot}", rest)
            n = per * block + layer
            if kind == "resnets":
                return _join(f"output_blocks.{n}.0", _map_resnet_to_ldm(rest))
            if kind == "attentions":
                return _join(f"output_blocks.{n}.1", rest)
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.+))?", path)
    if m:
        kind, layer, rest = m.group(1), int(m.group(2)), m.group(3) or ""
        if kind == "attentions":
            return _join("middle_block.1", rest)
        return _join(f"middle_block.{2 * layer}", _map_resnet_to_ldm(rest))
    raise ValueError(f"no LDM name for diffusers UNet module path {path!r}")


def kohya_to_target(name: str) -> str:
    """``lora_unet_input_blocks_4_1_proj_in`` -> ``unet.down_blocks.1.attentions.0.proj_in``."""
    for prefix, component in KOHYA_PREFIXES.items():
        if name.startswith(prefix):
            path = underscored_to_dotted(name[len(prefix):])
            if component == "unet" and is_ldm_unet_path(path):
                path = ldm_to_diffusers_unet(path)
            return f"{component}.{path}"
    raise ValueError(f"{name!r} has no kohya prefix ({', '.join(KOHYA_PREFIXES)})")


def target_to_kohya(target: str, *, sdxl: bool) -> str:
    """Inverse of `kohya_to_target`; SDXL UNet modules get LDM names as kohya writes them."""
    component, _, path = target.partition(".")
    if component == "unet":
        if sdxl:
            path = diffusers_to_ldm_unet(path)
        prefix = "lora_unet_"
    elif component == "text_encoder":
        prefix = "lora_te1_" if sdxl else "lora_te_"
    elif component == "text_encoder_2":
        prefix = "lora_te2_"
    else:
        raise ValueError(f"target {target!r} does not start with one of {COMPONENTS}")
    return prefix + path.replace(".", "_")


def split_target(target: str) -> tuple[str, str]:
    """``unet.a.b`` -> (``unet``, ``a.b``); raises ValueError for unknown components."""
    component, _, path = target.partition(".")
    if component not in COMPONENTS or not path:
        raise ValueError(f"target {target!r} must start with one of {COMPONENTS}")
    return component, path


_CLIP_ROOTS = ("encoder.", "embeddings.", "final_layer_norm")


def canonical_target(target: str) -> str:
    """Name CLIP text-encoder modules with the ``text_model.`` level, as kohya files and older
    transformers do (transformers 5 flattened it out of `CLIPTextModel`)."""
    component, _, path = target.partition(".")
    if component in ("text_encoder", "text_encoder_2") and path.startswith(_CLIP_ROOTS):
        return f"{component}.text_model.{path}"
    return target


def module_path_candidates(component_module, path: str) -> list[str]:
    """Paths to try inside a component: the canonical one, then without ``text_model.`` for
    text encoders whose class has no such level (transformers >= 5 `CLIPTextModel`)."""
    if path.startswith("text_model.") and not hasattr(component_module, "text_model"):
        return [path.removeprefix("text_model.")]
    return [path]
