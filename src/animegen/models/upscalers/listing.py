"""Which upscalers exist: the built-ins plus the model files in the upscaler folders, the one home of that list.

Contract of `list_upscalers(folders, *, allow_pickle=False)` (A1111 1.10's `shared.sd_upscalers` as its ESRGAN
upscaler fills it from models/ESRGAN):

- The built-ins come first, in `generate.upscale.UPSCALERS`' order ("None", "Lanczos", "Nearest"), then every
  model file found (recursively) in `folders`, sorted by name ignoring case, as A1111 sorts its list.
- A model's name is its file stem (A1111's `friendly_name`); on a stem found twice the first folder (then the
  first path in sorted order) wins. `.safetensors` files are always listed; `.pth` / `.pt` only with
  `allow_pickle` (the server never allows it, as its catalog lists no pickle).
- Only files that really live inside their folder are listed: a symlink escaping it is skipped.
- `model_name` is A1111's upscaler family: "RealESRGAN" for files under a folder called RealESRGAN (any case),
  "ESRGAN" otherwise; built-ins have None.
- `UpscalerEntry.scale` is the factor of one pass: 4 for the built-ins (A1111's `UpscalerData` default); for a
  `.safetensors` file the architecture detected (`architectures.build_network`, as loading detects it) from
  its header's shapes alone, on the meta device (no tensor data is read; cached per file, size and mtime);
  None for a pickle (reading its shapes means unpickling it) and for a file whose layout is not supported.

`upscaler_folders(model_dir, upscaler_dir)` is where the server and the CLI look: `model_dir`'s top-level
`ESRGAN/` and `RealESRGAN/` folders (any case; A1111's models/ESRGAN, models/RealESRGAN) and `upscaler_dir`.
`model_upscalers(folders, ...)` is the name -> file mapping of the model entries.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MODEL_SUFFIXES = (".safetensors",)
PICKLE_MODEL_SUFFIXES = (".pth", ".pt")  # A1111's ESRGAN ext_filter, less .safetensors
UPSCALER_SUBFOLDERS = ("ESRGAN", "RealESRGAN")
BUILTIN_SCALE = 4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpscalerEntry:
    """One upscaler of the list: a built-in (`path` None) or a model file, named as A1111 names it."""

    name: str
    path: Path | None = None
    model_name: str | None = None

    @property
    def scale(self) -> int | None:
        """The factor of one pass (see the module docstring)."""
        if self.path is None:
            return BUILTIN_SCALE
        if self.path.suffix.lower() not in MODEL_SUFFIXES:
            return None
        stat = self.path.stat()
        return _detected_scale(str(self.path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _detected_scale(path: str, size: int, mtime_ns: int) -> int | None:
    import torch
    from safetensors import safe_open

    from animegen.models.upscalers.architectures import build_network
    from animegen.models.upscalers.loading import unwrap

    try:
        with safe_open(path, framework="pt") as f:
            shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}  # noqa: SIM118 - not iterable
        with torch.device("meta"):  # shapes only: nothing is allocated or read
            return build_network(unwrap({k: torch.empty(s) for k, s in shapes.items()}, path)).scale
    except Exception as exc:  # noqa: BLE001 - one unreadable file must not break the listing
        log.warning("upscaler %s: cannot detect its architecture (%s)", path, exc)
        return None


def upscaler_folders(model_dir: str | os.PathLike | None = None,
                     upscaler_dir: str | os.PathLike | None = None) -> list[Path]:
    """`model_dir`'s ESRGAN/ and RealESRGAN/ folders that exist (any case), then `upscaler_dir`."""
    folders: list[Path] = []
    if model_dir is not None and Path(model_dir).is_dir():
        children = {p.name.lower(): p for p in sorted(Path(model_dir).iterdir()) if p.is_dir()}
        folders += [children[name.lower()] for name in UPSCALER_SUBFOLDERS if name.lower() in children]
    if upscaler_dir is not None:
        folders.append(Path(upscaler_dir))
    return folders


def _files_inside(folder: Path, suffixes: tuple[str, ...]) -> Iterable[Path]:
    """Files under `folder` with these suffixes whose real path stays inside it, in sorted order."""
    real_root = Path(os.path.realpath(folder))
    for dirpath, dirnames, filenames in os.walk(real_root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            real = Path(os.path.realpath(Path(dirpath) / name))
            if real.suffix.lower() in suffixes and real.is_file() and real.is_relative_to(real_root):
                yield real


def list_upscalers(folders: Iterable[str | os.PathLike | None] = (), *,
                   allow_pickle: bool = False) -> list[UpscalerEntry]:
    """The built-ins, then the model files in `folders` (see the module docstring)."""
    from animegen.generate.upscale import UPSCALERS

    suffixes = MODEL_SUFFIXES + (PICKLE_MODEL_SUFFIXES if allow_pickle else ())
    models: dict[str, UpscalerEntry] = {}
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        family = "RealESRGAN" if Path(folder).name.lower() == "realesrgan" else "ESRGAN"
        for path in _files_inside(Path(folder), suffixes):
            models.setdefault(path.stem, UpscalerEntry(path.stem, path, family))
    builtins = [UpscalerEntry(name) for name in UPSCALERS]
    return builtins + sorted(models.values(), key=lambda e: e.name.lower())


def model_upscalers(folders: Iterable[str | os.PathLike | None] = (), *, allow_pickle: bool = False) -> dict[str, Path]:
    """{name: file} of the model upscalers in `folders`, in the listing's order."""
    return {e.name: e.path for e in list_upscalers(folders, allow_pickle=allow_pickle) if e.path is not None}


__all__ = ["MODEL_SUFFIXES", "PICKLE_MODEL_SUFFIXES", "UPSCALER_SUBFOLDERS", "UpscalerEntry", "list_upscalers",
           "model_upscalers", "upscaler_folders"]
