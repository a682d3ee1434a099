"""IP-Adapter units (Ye et al. 2023), as A1111's sd-webui-controlnet extension applies them (issue #15).

Contract. An IP-Adapter unit is a `controlnet.ControlUnit` whose model is an IP-Adapter file (h94/IP-Adapter's
`ip-adapter_sd15.safetensors` / `.bin`, `ip-adapter-plus_sd15`, `ip-adapter_sdxl_vit-h`, `ip-adapter-plus_sdxl_vit-h`,
`ip-adapter_sdxl`, and the extension's renamed `.pth` copies: keys `image_proj.*` and `ip_adapter.*`, flat in
a `.safetensors` file, nested in a pickle) or whose preprocessor is one of the extension's `ip-adapter_clip_*`
modules (`is_ip_adapter_unit`). `IPAdapterRun(units, unet, total_steps)` is the units of one sampling pass:

* the image encoder (CLIPVisionModelWithProjection: ViT-H/14 for SD1.5 and the `vit-h` SDXL files, ViT-bigG for
  plain `ip-adapter_sdxl`) sees the unit's image through CLIP's preprocessing (shortest side to the encoder's
  size, centre crop, CLIP mean/std: transformers' `CLIPImageProcessor`);
* plain adapters project the encoder's `image_embeds` (diffusers' `ImageProjection`), "plus" adapters the
  penultimate hidden states (`IPAdapterPlusImageProjection`, the Resampler), converted from the files' keys by
  diffusers' `_convert_ip_adapter_image_proj_to_diffusers` / `_convert_ip_adapter_attn_to_diffusers`;
* negative rows (`cond["uncond_mark"]`) get the tokens of the unconditional embeds: plain = the projection of
  zero image embeds, plus = the projection of the encoder's hidden states for an all-zero image (as the extension's
  `ipadapter_model.get_image_embeds` and diffusers' `encode_image`);
* every cross-attention gets `softmax(Q K^T / sqrt(d)) V + weight * softmax(Q K_ip^T / sqrt(d)) V_ip` (diffusers'
  `IPAdapterAttnProcessor2_0`); several IP-Adapter units each add their own term with their own weight (the
  extension applies each unit as its own patch: contributions add, images are not averaged);
* weight and guidance start/end mean what they mean for ControlNet units (`ControlRun.active`, A1111's lagging
  `sampling_step`). While no unit is active the UNet call is exactly the plain one (its processors are not touched).

The IP attention processors are installed on the UNet only for the duration of one call (`forward`) and the
UNet's own processors restored after it, so the borrowed pipeline is never changed for good. Where we differ:
pickled files load only under the pickle policy (`core.files.load_torch_file`); the image encoder is looked up
beside the adapter (`image_encoder/` next to it or in `../models/`, as h94's repository lays them out) or in an
`encoder_dir` (`clip_vision` folder of transformers-layout `.safetensors` files, `clip_h` / `clip_g` as the
extension names them), never downloaded.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from animegen.core.errors import AnimegenError

IP_ADAPTER_MODULES = ("ip-adapter_clip_sd15", "ip-adapter_clip_h", "ip-adapter_clip_sdxl",
                      "ip-adapter_clip_sdxl_plus_vith", "ip-adapter_clip_g")
_cache: OrderedDict[tuple, object] = OrderedDict()
_lock = threading.Lock()


def is_ip_adapter_unit(unit) -> bool:
    """True for a unit whose preprocessor is an `ip-adapter_clip_*` module or whose model file is named ip-adapter*."""
    from animegen.generate.preprocessors import is_ip_adapter_module

    stem = Path(str(unit.model)).name.lower().replace("_", "-")
    return is_ip_adapter_module(getattr(unit, "preprocessor", "")) or stem.startswith("ip-adapter")


def _cached(key: tuple, make):
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = make()
    with _lock:
        _cache[key] = value
        while len(_cache) > 6:
            _cache.popitem(last=False)
    return value


# ---- files ----------------------------------------------------------------------------------------------------
def split_ip_adapter_state(state: dict, where: str = "IP-Adapter") -> dict[str, dict]:
    """{"image_proj": {...}, "ip_adapter": {...}} from a flat (`image_proj.proj.weight`) or nested state dict."""
    if isinstance(state.get("image_proj"), dict) and isinstance(state.get("ip_adapter"), dict):
        return {"image_proj": dict(state["image_proj"]), "ip_adapter": dict(state["ip_adapter"])}
    out: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in out and rest:
            out[head][rest] = value
    if not out["image_proj"] or not out["ip_adapter"]:
        raise AnimegenError(f"{where} is not an IP-Adapter (no image_proj.* / ip_adapter.* keys); give one of "
                            "h94/IP-Adapter's ip-adapter*.safetensors / .bin files")
    return out


def read_ip_adapter(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, dict]:
    """An IP-Adapter file's two state dicts; `.bin` / `.pth` only under the pickle policy."""
    from animegen.core.files import PICKLE_SUFFIXES, load_torch_file, read_safetensors

    path = Path(path)
    if not path.is_file():
        raise AnimegenError(f"IP-Adapter model {path} not found: give an ip-adapter*.safetensors (or .bin/.pth) file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        state = load_torch_file(path, allow_pickle=allow_pickle)
    else:
        state = read_safetensors(path)[0]
    return split_ip_adapter_state(state, str(path))


def is_plus(state: dict[str, dict]) -> bool:
    """A "plus" (Resampler) adapter: learned latents instead of one linear projection."""
    return "latents" in state["image_proj"]


def encoder_width(state: dict[str, dict]) -> int:
    """The image-encoder width an adapter expects: plain = projection dim (ViT-H 1024, bigG 1280), plus = hidden
    size of its penultimate layer (ViT-H 1280, bigG 1664)."""
    proj = state["image_proj"]
    return int((proj["proj_in.weight"] if is_plus(state) else proj["proj.weight"]).shape[-1])


# ---- the image encoder ----------------------------------------------------------------------------------------
_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}


def _vision_config_from_state(state: dict):
    """A CLIPVisionConfig read from a transformers-layout state dict's shapes (heads: ViT-L/H/bigG's known counts,
    else one head per 64 channels)."""
    from transformers import CLIPVisionConfig

    patch = state["vision_model.embeddings.patch_embedding.weight"]
    hidden, patch_size = patch.shape[0], patch.shape[-1]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers."))
    return CLIPVisionConfig(hidden_size=hidden, patch_size=patch_size,
                            image_size=round((positions - 1) ** 0.5) * patch_size, num_hidden_layers=layers,
                            num_attention_heads=_HEADS.get(hidden, max(1, hidden // 64)),
                            intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
                            projection_dim=state["visual_projection.weight"].shape[0],
                            hidden_act="gelu")


def load_image_encoder(path: str | os.PathLike):
    """A CLIPVisionModelWithProjection from a diffusers/transformers folder or one transformers-layout
    `.safetensors` file (cached)."""
    from transformers import CLIPVisionModelWithProjection

    path = Path(path)

    def make():
        if path.is_dir():
            return CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True).eval()
        from animegen.core.files import read_safetensors

        state = read_safetensors(path)[0]
        if "visual_projection.weight" not in state:
            raise AnimegenError(f"{path} is not a CLIP vision model in transformers' layout (vision_model.*, "
                                "visual_projection.weight)")
        with torch.device("meta"):
            model = CLIPVisionModelWithProjection(_vision_config_from_state(state))
        model.load_state_dict({k: v for k, v in state.items() if "position_ids" not in k}, strict=False, assign=True)
        return model.eval()
    return _cached(("encoder", str(path.resolve()), path.stat().st_mtime_ns), make)


def _encoder_width(path: Path, plus: bool) -> int | None:
    import json

    if path.is_dir():
        config = json.loads((path / "config.json").read_text())
        return int(config.get("hidden_size" if plus else "projection_dim", 0))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        name = "vision_model.embeddings.patch_embedding.weight" if plus else "visual_projection.weight"
        return int(f.get_slice(name).get_shape()[0]) if name in f.keys() else None  # noqa: SIM118 - safe_open has no __contains__


def find_image_encoder(adapter: str | os.PathLike, state: dict[str, dict], encoder_dir=None) -> Path:
    """The image encoder for `adapter`: the first candidate (folders `image_encoder` beside it or in `../models`,
    then `.safetensors` files in `encoder_dir` and its `clip_vision`) whose width fits; AnimegenError if none."""
    adapter, plus, width = Path(adapter), is_plus(state), encoder_width(state)
    candidates = [adapter.parent / "image_encoder", adapter.parent.parent / "models" / "image_encoder"]
    for folder in [Path(encoder_dir), Path(encoder_dir) / "clip_vision"] if encoder_dir else []:
        candidates += sorted(folder.glob("*.safetensors")) + [folder / "image_encoder"]
    for path in candidates:
        if (path.is_dir() and (path / "config.json").is_file()) or path.is_file():
            try:
                if _encoder_width(path, plus) == width:
                    return path
            except (OSError, ValueError, KeyError):
                continue
    kind = {1024: "ViT-H/14", 1280: "ViT-H/14" if plus else "ViT-bigG/14", 1664: "ViT-bigG/14"}.get(width, "CLIP")
    raise AnimegenError(f"IP-Adapter {adapter.name} needs a {kind} image encoder (width {width}): put h94/IP-Adapter's "
                        f"image_encoder folder beside it, or its .safetensors in the encoder folder "
                        f"({encoder_dir or 'none configured'})")


def clip_pixels(image, encoder) -> torch.Tensor:
    """CLIP's preprocessing at the encoder's image size (transformers' CLIPImageProcessor)."""
    from transformers import CLIPImageProcessor

    size = encoder.config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]


def image_tokens(image, encoder, projection, plus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) IP tokens (1, n, cross_dim) of `image`; see the module docstring for the negative."""
    pixels = clip_pixels(image, encoder).to(encoder.device, encoder.dtype)
    with torch.no_grad():
        if plus:
            hidden = encoder(pixels, output_hidden_states=True).hidden_states[-2]
            zero = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
            return projection(hidden.to(projection_dtype(projection))), projection(zero.to(projection_dtype(projection)))
        embeds = encoder(pixels).image_embeds.to(projection_dtype(projection))
        return projection(embeds), projection(torch.zeros_like(embeds))


def projection_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


# ---- one pass -------------------------------------------------------------------------------------------------
class IPAdapterRun:
    """The IP-Adapter units of one sampling pass; see the module docstring."""

    def __init__(self, units: Sequence, unet, total_steps: int, *, encoder_dir=None, allow_pickle: bool = False):
        self.units = list(units)
        self.total_steps = max(1, int(total_steps))
        self.sampling_step = 0
        for unit in self.units:
            if not 0 <= unit.guidance_start <= unit.guidance_end <= 1 or not unit.weight >= 0:
                raise AnimegenError(f"IP-Adapter weight {unit.weight} / guidance {unit.guidance_start}..."
                                    f"{unit.guidance_end}: need weight >= 0 and 0 <= start <= end <= 1")
        states = [read_ip_adapter(u.model, allow_pickle=allow_pickle) for u in self.units]
        device, dtype = unet.device, unet.dtype
        try:
            procs = unet._convert_ip_adapter_attn_to_diffusers(states, low_cpu_mem_usage=False)
        except (KeyError, RuntimeError) as exc:
            raise AnimegenError(f"IP-Adapter does not fit the loaded model ({unet.config.cross_attention_dim}-dim "
                                f"text; SD1.5 adapters need SD1.5, SDXL ones SDXL): {str(exc)[:200]}") from None
        self.processors = {k: p.to(device, dtype) if isinstance(p, torch.nn.Module) else p for k, p in procs.items()}
        self.tokens = []
        for unit, state in zip(self.units, states):
            projection = unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"],
                                                                          low_cpu_mem_usage=False).to(device, dtype)
            encoder = load_image_encoder(find_image_encoder(unit.model, state, encoder_dir)).to(device, dtype)
            self.tokens.append(image_tokens(unit.image, encoder, projection, is_plus(state)))

    def on_step(self, info: dict) -> None:
        """The sampler's step callback: A1111's `state.sampling_step = i`."""
        self.sampling_step = int(info.get("i", self.sampling_step))

    def scales(self) -> list[float]:
        """Each unit's weight while active (as `ControlRun.active`), else 0."""
        fraction = self.sampling_step / self.total_steps
        return [float(u.weight) if u.guidance_start <= fraction <= u.guidance_end else 0.0 for u in self.units]

    def forward(self, unet, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, uncond_mark: torch.Tensor,
                extra: dict) -> torch.Tensor:
        """The UNet's output with the active units' image attention (the plain call while none is active)."""
        scales = self.scales()
        if not any(scales):
            with torch.no_grad():
                return unet(x, t, encoder_hidden_states=embeds, return_dict=False, **extra)[0]
        mark = uncond_mark.to(x.device, embeds.dtype).view(-1, 1, 1)
        ip = [pos.to(embeds.dtype) * (1 - mark) + neg.to(embeds.dtype) * mark for pos, neg in self.tokens]
        for proc in self.processors.values():
            if hasattr(proc, "to_k_ip"):
                proc.scale = list(scales)
        saved = unet.attn_processors
        unet.set_attn_processor(dict(self.processors))
        try:
            with torch.no_grad():
                return unet(x, t, encoder_hidden_states=(embeds, ip), return_dict=False, **extra)[0]
        finally:
            unet.set_attn_processor(saved)
