"""What the server may load: checkpoints, VAEs and LoRAs found inside the configured folders, nothing else.

Requests name a model or LoRA; a name is only ever looked up in these listings, and every path is
re-checked against its root after resolving symlinks, so `..`, absolute paths and symlinks that
point outside the folder are refused. Pickle-based files (.ckpt/.pt/.bin) are never listed.

VAEs live in --model-dir too (A1111 keeps them in models/VAE and also takes `*.vae.*` files next to its
checkpoints): a `*.vae.safetensors` file anywhere inside it, or any .safetensors file under a top-level `VAE/`
(any case) folder, is a VAE, listed by `vaes()` with A1111's name (the file name) and never as a checkpoint.
`*.vae.pt` / `.ckpt` VAEs are pickles and, like every pickle, not listed.

Upscaler models live in --model-dir's top-level `ESRGAN/` and `RealESRGAN/` folders (any case; A1111's
models/ESRGAN, models/RealESRGAN) and in --upscaler-dir: `upscalers()` is `models.upscalers.list_upscalers` over
those folders with pickles off, so only `.safetensors` files are listed, by stem, and never as checkpoints.

Listings are computed from the folders on every call, so A1111's refresh routes have nothing to refresh.
`lora_metadata(path)` reads a LoRA's safetensors header only (its `__metadata__`), never the tensors.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from animegen.core.errors import AnimegenError
from animegen.core.files import WeightsFileError, safetensors_metadata

SAFE_WEIGHT_SUFFIXES = (".safetensors",)
VAE_SUFFIX = ".vae.safetensors"
VAE_FOLDER = "vae"  # a top-level folder of --model-dir, compared case-insensitively (A1111's models/VAE)

log = logging.getLogger(__name__)


class UnsafeNameError(AnimegenError):
    """A requested name tries to leave its folder (absolute path, `..`, symlink escape)."""


class NotFoundError(LookupError):
    """A requested model or LoRA is not in the configured folders."""


@dataclass(frozen=True)
class CheckpointEntry:
    """One loadable checkpoint, with A1111's naming (`title` = "name [hash]")."""

    name: str  # path relative to its root, posix separators ("sub/model.safetensors")
    path: Path
    hash: str | None = None

    @property
    def model_name(self) -> str:
        stem = self.name.removesuffix(".safetensors")
        return stem.replace("/", "_")

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]" if self.hash else self.name

    def aliases(self) -> set[str]:
        names = {self.name, self.title, self.model_name}
        if self.hash:
            names.add(self.hash)
        return names


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA file: `name` is its stem, as written in `<lora:name:weight>`."""

    name: str
    path: Path


@dataclass(frozen=True)
class VaeEntry:
    """One VAE file: `name` is its file name (A1111's `model_name`), `relative` its path inside --model-dir."""

    name: str
    relative: str
    path: Path


def is_upscaler_name(relative: str) -> bool:
    """Whether a posix path relative to --model-dir lies in its ESRGAN/ or RealESRGAN/ folder (any case)."""
    from animegen.models.upscalers.listing import UPSCALER_SUBFOLDERS

    parts = PurePosixPath(relative).parts
    return len(parts) > 1 and parts[0].lower() in {name.lower() for name in UPSCALER_SUBFOLDERS}


def is_vae_name(relative: str) -> bool:
    """Whether a posix path relative to --model-dir names a VAE file (see the module docstring)."""
    parts = PurePosixPath(relative).parts
    return relative.lower().endswith(VAE_SUFFIX) or (len(parts) > 1 and parts[0].lower() == VAE_FOLDER)


def lora_metadata(path: Path) -> dict:
    """A LoRA's safetensors `__metadata__` (`core.files.safetensors_metadata`: header only, JSON-object values
    parsed as A1111 does); an unreadable header gives {} (logged), so one bad file cannot break a listing."""
    try:
        return safetensors_metadata(path)
    except WeightsFileError as exc:
        log.warning("LoRA %s", exc)
        return {}


def check_relative_name(name: str) -> PurePosixPath:
    """Refuse names that are absolute or climb out of a folder; return the normalized relative path."""
    if not name or "\x00" in name:
        raise UnsafeNameError("empty or NUL-containing name")
    text = name.replace("\\", "/")
    rel = PurePosixPath(text)
    if rel.is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise UnsafeNameError(f"{name!r} is an absolute path; give a name listed by the server")
    if any(part == ".." for part in rel.parts):
        raise UnsafeNameError(f"{name!r} contains '..'; give a name listed by the server")
    return rel


def resolve_inside(root: Path, name: str) -> Path:
    """`root/name` with symlinks resolved, or UnsafeNameError when it lands outside `root`."""
    rel = check_relative_name(name)
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(real_root / rel))
    if not target.is_relative_to(real_root):
        raise UnsafeNameError(f"{name!r} resolves outside {root}")
    return target


def _walk_inside(root: Path, *, descend=lambda real: True):
    """Yield (relative posix name, real path) for files/dirs under `root` that really live inside it.

    Directories for which `descend(real_path)` is False are yielded but not entered.
    """
    real_root = Path(os.path.realpath(root))
    for dirpath, dirnames, filenames in os.walk(real_root, followlinks=False):
        keep = []
        for entry in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath) / entry
            real = Path(os.path.realpath(full))
            if not real.is_relative_to(real_root):
                continue  # a symlink escaping the folder is not offered
            yield full.relative_to(real_root).as_posix(), real
            if entry in dirnames and not full.is_symlink() and descend(real):
                keep.append(entry)
        dirnames[:] = keep


def _is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


class Catalog:
    """Lists and resolves checkpoints (`model_dir` + the start model), LoRAs (`lora_dir`) and upscalers."""

    def __init__(self, model: str, model_dir: Path | None, lora_dir: Path | None, upscaler_dir: Path | None = None):
        self.model_dir = Path(model_dir) if model_dir else None
        self.lora_dir = Path(lora_dir) if lora_dir else None
        self.upscaler_dir = Path(upscaler_dir) if upscaler_dir else None
        self.start_entry = self._start_entry(model)
        self._hashes: dict[Path, str] = {}

    def _start_entry(self, model: str) -> CheckpointEntry:
        path = Path(model)
        if self.model_dir is not None and path.exists():
            real = Path(os.path.realpath(path))
            real_root = Path(os.path.realpath(self.model_dir))
            if real.is_relative_to(real_root):
                return CheckpointEntry(real.relative_to(real_root).as_posix(), real)
        return CheckpointEntry(path.name if path.exists() else model, path)

    def remember_hash(self, path: Path, value: str | None) -> None:
        """Record a hash computed while loading, so listings can show A1111 titles without re-reading."""
        if value:
            self._hashes[Path(os.path.realpath(path))] = value

    def checkpoints(self) -> list[CheckpointEntry]:
        """The start model first, then every .safetensors file and diffusers folder inside model_dir."""
        found: list[CheckpointEntry] = []
        seen: set[Path] = set()
        start = self.start_entry
        start_real = Path(os.path.realpath(start.path)) if start.path.exists() else start.path
        found.append(CheckpointEntry(start.name, start.path, self._hashes.get(start_real)))
        seen.add(start_real)
        if self.model_dir is not None and self.model_dir.is_dir():
            for name, real in _walk_inside(self.model_dir, descend=lambda d: not _is_diffusers_folder(d)):
                if real in seen:
                    continue
                is_file = (real.is_file() and real.suffix in SAFE_WEIGHT_SUFFIXES and not is_vae_name(name)
                           and not is_upscaler_name(name))
                is_diffusers = _is_diffusers_folder(real)
                if is_file or is_diffusers:
                    seen.add(real)
                    found.append(CheckpointEntry(name, real, self._hashes.get(real)))
        return found

    def find_checkpoint(self, name: str) -> CheckpointEntry:
        """Look `name` up by title, relative name, model_name or hash; never as a free path."""
        check_relative_name(name)
        for index, entry in enumerate(self.checkpoints()):
            if name in entry.aliases():
                if index > 0:  # re-check at use time: symlinks may have changed since the listing
                    resolve_inside(self.model_dir, entry.name)
                return entry
        raise NotFoundError(f"model {name!r} not found; GET /sdapi/v1/sd-models lists the available ones")

    def vaes(self) -> list[VaeEntry]:
        """Every VAE file inside model_dir (see the module docstring), sorted by name; first name wins."""
        if self.model_dir is None or not self.model_dir.is_dir():
            return []
        entries: dict[str, VaeEntry] = {}
        for name, real in _walk_inside(self.model_dir, descend=lambda d: not _is_diffusers_folder(d)):
            if real.is_file() and real.suffix in SAFE_WEIGHT_SUFFIXES and is_vae_name(name):
                entries.setdefault(PurePosixPath(name).name, VaeEntry(PurePosixPath(name).name, name, real))
        return sorted(entries.values(), key=lambda e: e.name.lower())

    def upscaler_folders(self) -> list[Path]:
        """Where model upscalers are looked for (see the module docstring); the generator gets the same."""
        from animegen.models.upscalers.listing import upscaler_folders

        return upscaler_folders(self.model_dir, self.upscaler_dir)

    def upscalers(self):
        """The built-in upscalers, then the `.safetensors` upscaler models (`list_upscalers` entries)."""
        from animegen.models.upscalers.listing import list_upscalers

        return list_upscalers(self.upscaler_folders(), allow_pickle=False)

    def loras(self) -> list[LoraEntry]:
        """Every .safetensors LoRA inside lora_dir, by stem (first one wins on duplicate stems)."""
        if self.lora_dir is None or not self.lora_dir.is_dir():
            return []
        entries: dict[str, LoraEntry] = {}
        for name, real in _walk_inside(self.lora_dir):
            if real.is_file() and real.suffix in SAFE_WEIGHT_SUFFIXES:
                stem = PurePosixPath(name).stem
                entries.setdefault(stem, LoraEntry(stem, real))
        return list(entries.values())

    def find_lora(self, name: str) -> LoraEntry:
        """Resolve a `<lora:name:w>` name to a file inside lora_dir, or raise."""
        check_relative_name(name)
        for entry in self.loras():
            if entry.name == name:
                resolve_inside(self.lora_dir, os.path.relpath(entry.path, os.path.realpath(self.lora_dir)))
                return entry
        if self.lora_dir is None:
            raise NotFoundError(f"LoRA {name!r} requested but the server has no --lora-dir")
        raise NotFoundError(f"LoRA {name!r} not found; GET /sdapi/v1/loras lists the available ones")
