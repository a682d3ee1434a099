"""The model families animegen supports (SD1.x, SD2.x, SDXL): one description each, one place to ask.

Everything that differs between families and is not in a tensor lives here: which text encoders a
family has (with their LDM and kohya prefixes, kind and pad token), its default image size, VAE latent
scaling factor, kohya `ss_base_model_version`, modelspec architecture, and the released diffusers
configs shipped in `configs/<name>/`. Code that needs such a fact asks `family_of(obj)` or
`get_family(name)` instead of testing `text_encoder_2` or hard-coding 1024 / 0.13025.

Deliberate choices:
- SD2's default size is 512, as the engine has always used for non-SDXL models, although the 768-v
  release (whose config is shipped, v-prediction) was trained at 768.
- OpenCLIP encoders (SD2, SDXL's second) pad with `!` (id 0), as the released tokenizers and A1111 do.
- `sd15` is an alias of `sd1` (`models tiny --arch sd15`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Literal

from animegen.core.errors import AnimegenError

CONFIG_DIR = Path(str(files("animegen.models") / "configs"))

TextEncoderKind = Literal["clip", "open_clip"]


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family, and how each file layout names it."""

    component: str  # pipeline attribute: "text_encoder" / "text_encoder_2"
    kind: TextEncoderKind  # "clip": HF CLIP-L layout in LDM files; "open_clip": OpenCLIP (fused q/k/v)
    description: str  # "CLIP-L", "OpenCLIP-H", "OpenCLIP-bigG"
    ldm_prefix: str  # the embedder in A1111/LDM files: "cond_stage_model.", "conditioner.embedders.1."
    kohya_prefix: str  # kohya LoRA key prefix: "lora_te_", "lora_te1_", "lora_te2_"
    pad_token: str  # what the tokenizer pads with
    with_projection: bool = False  # CLIPTextModelWithProjection (SDXL's pooled embedding)

    @property
    def tokenizer(self) -> str:
        """The pipeline attribute of this encoder's tokenizer: `tokenizer` / `tokenizer_2`."""
        return self.component.replace("text_encoder", "tokenizer")

    @property
    def ldm_weights_prefix(self) -> str:
        """Where this encoder's tensors start in an LDM file (`cond_stage_model.transformer.` …)."""
        return self.ldm_prefix + ("transformer." if self.kind == "clip" else "model.")


@dataclass(frozen=True)
class ModelFamily:
    """What one family is, beyond what its tensors say."""

    name: str  # "sd1" / "sd2" / "sdxl"
    display_name: str
    text_encoders: tuple[TextEncoderSpec, ...]
    default_size: int  # generation width/height when none is asked for
    vae_scaling_factor: float
    vae_force_upcast: bool  # the VAE overflows in fp16 (decode in fp32)
    kohya_base_model_version: str  # kohya `ss_base_model_version`
    modelspec_architecture: str  # `modelspec.architecture` (SAI model spec 1.0)
    kohya_unet_names: Literal["diffusers", "ldm"]  # how kohya LoRA files name this family's UNet modules
    aliases: tuple[str, ...] = ()

    @property
    def config_dir(self) -> Path:
        """The shipped released diffusers configs (`unet.json`, `vae.json`, `text_encoder*.json`, …)."""
        return CONFIG_DIR / self.name

    def config(self, component: str) -> dict:
        """A fresh copy of the released diffusers config of `component` (raises AnimegenError if none)."""
        return copy.deepcopy(_read_config(self.name, component))

    @property
    def components(self) -> tuple[str, ...]:
        """The text-encoder component names, in pipeline order."""
        return tuple(te.component for te in self.text_encoders)

    def text_encoder(self, component: str) -> TextEncoderSpec:
        for te in self.text_encoders:
            if te.component == component:
                return te
        raise AnimegenError(f"{self.display_name} has no {component!r}; its text encoders are "
                            f"{', '.join(self.components)}")

    @property
    def is_sdxl(self) -> bool:
        """Two text encoders, pooled + size/crop conditioning (the SDXL pipeline class)."""
        return self.name == "sdxl"

    @property
    def kohya_v2(self) -> bool:
        """kohya's `ss_v2` flag (SD2.x models)."""
        return self.name == "sd2"


@cache
def _read_config(family: str, component: str) -> dict:
    path = CONFIG_DIR / family / f"{component}.json"
    if not path.is_file():
        raise AnimegenError(f"no shipped {component} config for family {family!r} (looked for {path})")
    return json.loads(path.read_text())


_CLIP_L_PAD = "<|endoftext|>"
_OPEN_CLIP_PAD = "!"

SD1 = ModelFamily(
    name="sd1", display_name="Stable Diffusion 1.x",
    text_encoders=(TextEncoderSpec("text_encoder", "clip", "CLIP-L", "cond_stage_model.", "lora_te_", _CLIP_L_PAD),),
    default_size=512, vae_scaling_factor=0.18215, vae_force_upcast=False,
    kohya_base_model_version="sd_v1", modelspec_architecture="stable-diffusion-v1",
    kohya_unet_names="diffusers", aliases=("sd15", "sd1.5", "sd_v1"),
)
SD2 = ModelFamily(
    name="sd2", display_name="Stable Diffusion 2.x",
    text_encoders=(TextEncoderSpec("text_encoder", "open_clip", "OpenCLIP-H", "cond_stage_model.", "lora_te_",
                                   _OPEN_CLIP_PAD),),
    default_size=512, vae_scaling_factor=0.18215, vae_force_upcast=False,
    kohya_base_model_version="sd_v2", modelspec_architecture="stable-diffusion-v2-768-v",
    kohya_unet_names="diffusers", aliases=("sd21", "sd2.1", "sd_v2"),
)
SDXL = ModelFamily(
    name="sdxl", display_name="SDXL",
    text_encoders=(
        TextEncoderSpec("text_encoder", "clip", "CLIP-L", "conditioner.embedders.0.", "lora_te1_", _CLIP_L_PAD),
        TextEncoderSpec("text_encoder_2", "open_clip", "OpenCLIP-bigG", "conditioner.embedders.1.", "lora_te2_",
                        _OPEN_CLIP_PAD, with_projection=True),
    ),
    default_size=1024, vae_scaling_factor=0.13025, vae_force_upcast=True,
    kohya_base_model_version="sdxl_base_v1-0", modelspec_architecture="stable-diffusion-xl-v1-base",
    kohya_unet_names="ldm", aliases=("sdxl_base_v1-0", "xl"),
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SD1, SD2, SDXL)}
_BY_ALIAS = {alias: f for f in FAMILIES.values() for alias in (f.name, *f.aliases)}


def get_family(name: str | ModelFamily) -> ModelFamily:
    """The family called `name` or one of its aliases (`sd15` -> sd1); AnimegenError lists the valid names."""
    if isinstance(name, ModelFamily):
        return name
    family = _BY_ALIAS.get(str(name).strip().lower())
    if family is None:
        valid = ", ".join(f"{f.name}{' (' + ', '.join(f.aliases) + ')' if f.aliases else ''}"
                          for f in FAMILIES.values())
        raise AnimegenError(f"unknown model family {name!r}; choose one of: {valid}")
    return family


def _family_of_pipeline(pipe) -> ModelFamily:
    if getattr(pipe, "text_encoder_2", None) is not None:
        return SDXL
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is None:
        raise AnimegenError(f"cannot tell the family of this {type(pipe).__name__}: it has no text encoder")
    # OpenCLIP (SD2) and CLIP-L (SD1) differ in activation, whatever their size
    act = getattr(encoder.config, "hidden_act", "quick_gelu")
    return SD2 if act == SD2.config("text_encoder")["hidden_act"] else SD1


def _family_of_lora(lora) -> ModelFamily:
    meta = lora.metadata
    version = meta.get("ss_base_model_version", "")  # kohya: sd_v1, sd_v2, sd_v2_v, sdxl_base_v1-0
    arch = meta.get("modelspec.architecture", "").split("/")[0]  # e.g. stable-diffusion-xl-v1-base/lora
    for family in FAMILIES.values():
        if (version and version.startswith(family.kohya_base_model_version)) or arch == family.modelspec_architecture:
            return family
    if meta.get("ss_v2") == "True":
        return SD2
    sdxl_only = tuple(f"{te.component}." for te in SDXL.text_encoders[1:]) + ("unet.add_embedding.",)
    return SDXL if any(t.startswith(sdxl_only) for t in lora.modules) else SD1


def family_of(obj) -> ModelFamily:
    """The family of a diffusers pipeline, an LDM state dict, a `LoraFile`, an `ArchInfo` or a name.

    State dicts are detected from their keys (`detect.detect_architecture`, CheckpointError if not
    SD1/SD2/SDXL); LoRA files from their kohya/modelspec header, else from SDXL-only targets
    (a second text encoder, `add_embedding`), else SD1.
    """
    if isinstance(obj, (str, ModelFamily)):
        return get_family(obj)
    from animegen.models.lora.module import LoraFile

    if isinstance(obj, LoraFile):
        return _family_of_lora(obj)
    if isinstance(obj, Mapping):
        from animegen.models.detect import detect_architecture

        return FAMILIES[detect_architecture(obj).family]
    family = getattr(obj, "family", None)  # ArchInfo
    if isinstance(family, str) and hasattr(obj, "prediction_type"):
        return get_family(family)
    if hasattr(obj, "unet") or hasattr(obj, "text_encoder"):
        return _family_of_pipeline(obj)
    raise AnimegenError(f"cannot tell the model family of a {type(obj).__name__}; give a pipeline, "
                        "a state dict, a LoraFile or a family name")


__all__ = ["FAMILIES", "SD1", "SD2", "SDXL", "ModelFamily", "TextEncoderSpec", "family_of", "get_family"]
