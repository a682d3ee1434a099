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

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says what was tried and how to fix it."""


class PickleRefusedError(ModelLoadError):
    """A pickled checkpoint was given without explicit permission to unpickle it."""


def refuse_pickle(path: Path) -> None:
    raise PickleRefusedError(
        f"{path} is a pickled checkpoint ({path.suffix}); unpickling can run arbitrary code, so it is refused. "
        "Convert it to .safetensors, or pass --allow-pickle (allow_pickle=True) to read its tensors only "
        "(torch.load with weights_only=True)."
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (half precision is slow and lossy there); bf16 on GPUs that have it, else fp16."""
    if not str(device).startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def parse_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(names)}")
    return names[dtype]


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
    looks_like_path = text.startswith((".", "/", "~")) or text.endswith((".safetensors", *PICKLE_SUFFIXES))
    if looks_like_path or text.count("/") != 1:
        raise ModelLoadError(
            f"model {text!r} not found: no such file or folder ({path.resolve()}), and it is not a hub id of "
            "the form 'org/name'. Give a diffusers folder, a .safetensors checkpoint, or a hub id."
        )
    return ModelSource("hub", text)


def _pipeline_class(name: str):
    import diffusers

    if name not in SUPPORTED_PIPELINES:
        raise ModelLoadError(
            f"pipeline class {name!r} is not supported; animegen loads {', '.join(SUPPORTED_PIPELINES)}"
        )
    return getattr(diffusers, name)


def _load_folder(folder: Path, dtype: torch.dtype, local_files_only: bool = True):
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(
            f"{folder} is a folder but not a diffusers model (no model_index.json). Point --model at the folder "
            "that holds model_index.json, or at a single .safetensors checkpoint."
        )
    cls = _pipeline_class(json.loads(index.read_text())["_class_name"])
    extra = {"safety_checker": None, "requires_safety_checker": False} if "XL" not in cls.__name__ else {}
    return cls.from_pretrained(folder, dtype=dtype, local_files_only=local_files_only, **extra)


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

    `family` picks a single file's latent scaling factor (SD1/2: 0.18215, SDXL: 0.13025), which the
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
        if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
            refuse_pickle(path)
        from animegen.models.single_file import load_vae_file

        return load_vae_file(path, allow_pickle=allow_pickle, dtype=dtype, family=family)
    raise ModelLoadError(f"VAE {str(vae)!r} not found: give a VAE folder or a .safetensors VAE file")


def load_pipeline(model: str | os.PathLike, *, vae: str | os.PathLike | None = None, device: str | None = None,
                  dtype: str | torch.dtype | None = None, allow_pickle: bool = False):
    """Load a StableDiffusionPipeline or StableDiffusionXLPipeline from any model reference.

    fp16 SDXL VAEs overflow to black images; diffusers' SDXL pipeline upcasts the VAE for decoding
    when `vae.config.force_upcast` is set, which the shipped SDXL config does.
    """
    device = device or default_device()
    torch_dtype = parse_dtype(dtype, device)
    source = classify_model_ref(model)
    if source.kind == "folder":
        pipe = _load_folder(Path(source.location), torch_dtype)
    elif source.kind == "single_file":
        path = Path(source.location)
        if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
            refuse_pickle(path)
        if path.suffix not in (".safetensors", *PICKLE_SUFFIXES):
            raise ModelLoadError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors")
        from animegen.models.single_file import load_single_file

        if vae is not None and not Path(vae).expanduser().exists():
            raise ModelLoadError(f"VAE {str(vae)!r} not found: give a VAE folder or a .safetensors VAE file")
        if vae is not None and Path(vae).suffix in PICKLE_SUFFIXES and not allow_pickle:
            refuse_pickle(Path(vae))
        # the VAE goes in at load time (with the checkpoint's family) so a VAE-less checkpoint still loads
        pipe = load_single_file(path, allow_pickle=allow_pickle, dtype=torch_dtype, vae=vae)
        vae = None
    else:
        pipe = _load_hub(source.location, torch_dtype)
    if vae is not None:
        family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd1"
        pipe.register_modules(vae=load_vae(vae, torch_dtype, allow_pickle, family=family))
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_name(model: str | os.PathLike) -> str:
    """The short name A1111 writes as `Model:` — the file or folder name without extension."""
    path = Path(model)
    return path.stem if path.suffix in (".safetensors", *PICKLE_SUFFIXES) else path.name


def _cache_file() -> Path:
    root = Path(os.environ.get("ANIMEGEN_CACHE", Path.home() / ".cache" / "animegen"))
    return root / "hashes.json"


def sha256_of(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) so multi-GB checkpoints are hashed once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    cache[key] = digest.hexdigest()
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only home only costs re-hashing next time
    return cache[key]


def model_hash(model: str | os.PathLike) -> str | None:
    """A1111's `Model hash`: first 10 hex digits of the checkpoint's sha256.

    A diffusers folder has no single file; we hash its UNet weights, which identify the model.
    Hub ids that are not local have no hash (None), as A1111 leaves the field out.
    """
    path = Path(model)
    if path.is_file():
        return sha256_of(path)[:10]
    if path.is_dir():
        weights = sorted((path / "unet").glob("*.safetensors")) or sorted((path / "unet").glob("*.bin"))
        if weights:
            digest = hashlib.sha256("".join(sha256_of(w) for w in weights).encode()).hexdigest()
            return digest[:10]
    return None
