"""Load a model the way users have it: a hub id, a diffusers folder, or an A1111/Civitai single file.

Every failure names what was tried and what would fix it. Pickled checkpoints (`.ckpt`, `.pt`,
`.bin`, `.pth`) can run arbitrary code when unpickled, so they are refused unless the caller
explicitly allows them — and even then only tensors are read (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from animegen.core.errors import AnimegenError
from animegen.core.files import PICKLE_SUFFIXES, PickleRefusedError, refuse_pickle_unless_allowed, sha256_file

SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
# diffusers inpainting folders hold the same components (a 9-channel UNet, `generate.kpipeline` feeds it)
INPAINTING_PIPELINES = {"StableDiffusionInpaintPipeline": "StableDiffusionPipeline",
                        "StableDiffusionXLInpaintPipeline": "StableDiffusionXLPipeline"}


class ModelLoadError(AnimegenError):
    """A model could not be loaded; the message says what was tried and how to fix it."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """`device` if this torch can use it; else a ModelLoadError naming the fix (before any model is loaded)."""
    kind = str(device).split(":", 1)[0]
    if kind == "cuda" and not torch.cuda.is_available():
        why = ("this torch build has no CUDA support" if torch.version.cuda is None
               else "no CUDA GPU is visible (check CUDA_VISIBLE_DEVICES and the driver)")
        raise ModelLoadError(f"device {device!r} is not available: {why} (torch {torch.__version__}); "
                             "use --device cpu, or install a CUDA build of torch")
    if kind == "cuda" and ":" in str(device):
        index = int(str(device).split(":", 1)[1] or 0)
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} is not available: {torch.cuda.device_count()} CUDA GPU(s) "
                                 "visible; use --device cuda:0 or another index")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r} is not available on this machine; use --device cpu")
    return device


def default_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (half precision is slow and lossy there); bf16 on GPUs that have it, else fp16."""
    if not str(device).startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


#: The one dtype vocabulary (generate, serve, train, export): short names; torch's long names are aliases.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def dtype_by_name(name: str) -> torch.dtype:
    """`fp32` / `fp16` / `bf16` (or `float32` / `float16` / `bfloat16`) -> the torch dtype."""
    short = _DTYPE_ALIASES.get(name, name)
    if short not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; choose one of auto, fp32, fp16, bf16 "
                             "(or float32, float16, bfloat16)")
    return DTYPES[short]


def parse_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """A torch dtype, a name (`dtype_by_name`), or None / `auto` (`default_dtype` for `device`)."""
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    return dtype_by_name(dtype)


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference points: 'folder', 'single_file' or 'hub'."""

    kind: str
    location: str


def classify_model_ref(model: str | os.PathLike) -> ModelSource:
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelSource("folder", str(path))
    if path.is_file():
        return ModelSource("single_file", str(path))
    text = str(model)
    # `models/x` when a local `models/` folder exists is a mistyped path, not the hub id "models/x"
    looks_like_path = (text.startswith((".", "/", "~")) or text.endswith((".safetensors", *PICKLE_SUFFIXES))
                       or path.is_absolute() or Path(text.split("/", 1)[0]).is_dir())
    if looks_like_path or text.count("/") != 1:
        raise ModelLoadError(
            f"model {text!r} not found: no such file or folder ({path.resolve()}), and it is not a hub id of "
            "the form 'org/name'. Give a diffusers folder, a .safetensors checkpoint, or a hub id."
        )
    return ModelSource("hub", text)


def _pipeline_class(name: str):
    import diffusers

    name = INPAINTING_PIPELINES.get(name, name)
    if name not in SUPPORTED_PIPELINES:
        raise ModelLoadError(
            f"pipeline class {name!r} is not supported; animegen loads {', '.join(SUPPORTED_PIPELINES)}"
        )
    return getattr(diffusers, name)


def _pickled_only_weights(folder: Path) -> list[Path]:
    """Pickled weight files in a diffusers folder's components that have no .safetensors beside them."""
    found = []
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f for f in component.iterdir() if f.is_file()]
        if not any(f.suffix == ".safetensors" for f in files):
            found += [f for f in files if f.suffix in PICKLE_SUFFIXES]
    return found


def _load_folder(folder: Path, dtype: torch.dtype, local_files_only: bool = True, allow_pickle: bool = False):
    """A diffusers folder; without `allow_pickle` only .safetensors weights are read (diffusers and
    transformers read pickled .bin weights with `weights_only=True` when it is given)."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(
            f"{folder} is a folder but not a diffusers model (no model_index.json). Point --model at the folder "
            "that holds model_index.json, or at a single .safetensors checkpoint."
        )
    pickled = _pickled_only_weights(folder)
    if pickled and not allow_pickle:
        raise PickleRefusedError(pickled[0])
    cls = _pipeline_class(json.loads(index.read_text())["_class_name"])
    extra = {"safety_checker": None, "requires_safety_checker": False} if "XL" not in cls.__name__ else {}
    return cls.from_pretrained(folder, dtype=dtype, local_files_only=local_files_only,
                               use_safetensors=None if allow_pickle else True, **extra)


def _load_hub(repo_id: str, dtype: torch.dtype):
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        folder = snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"],
                                   local_files_only=offline)
    except LocalEntryNotFoundError as e:
        raise ModelLoadError(
            f"hub model {repo_id!r} is not in the Hugging Face cache ({_hf_cache_dir()}) and the hub is "
            f"{'offline (HF_HUB_OFFLINE=1)' if offline else 'unreachable'}. Download it on a connected machine "
            "(`hf download ...`) and copy the cache, or pass a local folder or .safetensors file."
        ) from e
    except Exception as e:  # network errors, gated repos, missing repos
        raise ModelLoadError(
            f"could not fetch hub model {repo_id!r} ({type(e).__name__}: {e}); checked the cache at "
            f"{_hf_cache_dir()}. Set HF_HUB_OFFLINE=1 to use only the cache, or pass a local path."
        ) from e
    return _load_folder(Path(folder), dtype)


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def load_vae(vae: str | os.PathLike, dtype: torch.dtype, allow_pickle: bool = False, family: str = "sd1"):
    """A VAE override: a diffusers VAE folder (or a model folder with `vae/`), or a single VAE file.

    `family` picks a single file's latent scaling factor (`ModelFamily.vae_scaling_factor`), which the
    weights themselves cannot reveal.
    """
    from diffusers import AutoencoderKL

    path = Path(vae).expanduser()
    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").is_file() else None
        if sub is None and not (path / "config.json").is_file():
            raise ModelLoadError(f"VAE folder {path} has neither config.json nor vae/config.json")
        return AutoencoderKL.from_pretrained(path, subfolder=sub, dtype=dtype, local_files_only=True)
    if path.is_file():
        refuse_pickle_unless_allowed(path, allow_pickle)
        from animegen.models.single_file import load_vae_file

        return load_vae_file(path, allow_pickle=allow_pickle, dtype=dtype, family=family)
    raise ModelLoadError(f"VAE {str(vae)!r} not found: give a VAE folder or a .safetensors VAE file")


def load_pipeline(model: str | os.PathLike, *, vae: str | os.PathLike | None = None, device: str | None = None,
                  dtype: str | torch.dtype | None = None, allow_pickle: bool = False):
    """Load a StableDiffusionPipeline or StableDiffusionXLPipeline from any model reference.

    fp16 SDXL VAEs overflow to black images; diffusers' SDXL pipeline upcasts the VAE for decoding
    when `vae.config.force_upcast` is set, which the shipped SDXL config does.
    """
    device = check_device(device or default_device())
    torch_dtype = parse_dtype(dtype, device)
    source = classify_model_ref(model)
    if source.kind == "folder":
        pipe = _load_folder(Path(source.location), torch_dtype, allow_pickle=allow_pickle)
    elif source.kind == "single_file":
        path = Path(source.location)
        refuse_pickle_unless_allowed(path, allow_pickle)
        if path.suffix not in (".safetensors", *PICKLE_SUFFIXES):
            raise ModelLoadError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors")
        from animegen.models.single_file import load_single_file

        if vae is not None and not Path(vae).expanduser().exists():
            raise ModelLoadError(f"VAE {str(vae)!r} not found: give a VAE folder or a .safetensors VAE file")
        if vae is not None:
            refuse_pickle_unless_allowed(vae, allow_pickle)
        # the VAE goes in at load time (with the checkpoint's family) so a VAE-less checkpoint still loads
        pipe = load_single_file(path, allow_pickle=allow_pickle, dtype=torch_dtype, vae=vae)
        vae = None
    else:
        pipe = _load_hub(source.location, torch_dtype)
    if vae is not None:
        from animegen.models.family import family_of

        pipe.register_modules(vae=load_vae(vae, torch_dtype, allow_pickle, family=family_of(pipe).name))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_name(model: str | os.PathLike) -> str:
    """The short name A1111 writes as `Model:` — the file or folder name without extension."""
    path = Path(model)
    return path.stem if path.suffix in (".safetensors", *PICKLE_SUFFIXES) else path.name


def model_hash(model: str | os.PathLike) -> str | None:
    """A1111's `Model hash`: first 10 hex digits of the checkpoint's sha256.

    A diffusers folder has no single file; we hash its UNet weights, which identify the model.
    Hub ids that are not local have no hash (None), as A1111 leaves the field out.
    """
    path = Path(model)
    if path.is_file():
        return sha256_file(path)[:10]
    if path.is_dir():
        weights = sorted((path / "unet").glob("*.safetensors")) or sorted((path / "unet").glob("*.bin"))
        if weights:
            digest = hashlib.sha256("".join(sha256_file(w) for w in weights).encode()).hexdigest()
            return digest[:10]
    return None
