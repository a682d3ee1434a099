"""Checkpoint merges as sd-webui-supermerger makes them: weighted sum, add difference, per UNet block.

Per tensor, with α the tensor's block weight (`block_of`):

    weighted_sum:    out = (1 − α)·A + α·B
    add_difference:  out = A + α·(B − C)

computed in float32 (float64 stays float64) and cast back to A's dtype, so the output has A's keys,
shapes and dtypes. `alpha` is one number, or one per block in supermerger's block naming: ``BASE``
(the text encoders), ``IN00``…``IN11``, ``M00``, ``OUT00``…``OUT11`` for SD1/SD2 and ``IN00``…``IN08``,
``M00``, ``OUT00``…``OUT08`` for SDXL (the counts come from the UNet config, so they hold for any
layout), plus ``VAE``, which takes BASE's weight unless named (SD1 supermerger merges the VAE with the
base alpha; its SDXL mode has a VAE slot). A UNet key's block is its LDM `input_blocks.N` /
`middle_block` / `output_blocks.N`; `time_embed` and `label_emb` belong to IN00 and the final `out.*`
layers to the last OUT block, the original block-weighted merge's rule (current supermerger leaves
SDXL's time/label embeddings unmerged; we merge them with IN00 in every family). `block_weights`
reads supermerger's comma list (``"0.5,1,1,…"``, BASE first).

Keys as supermerger handles them: a key A has and B (or, for add difference, C) lacks is A's tensor
unchanged; a key only B has is copied from B (single files; a diffusers folder keeps A's keys);
CLIP's `position_ids` and non-float tensors are A's. An inpainting A (9 input channels) merges its
first 4 with a 4-channel B, as supermerger does; any other shape mismatch is an error naming the key.

Streaming: tensors are read one key at a time through safetensors `safe_open` and written straight to
the output (`_TensorStreamWriter`: the header is known from the inputs' shapes, then each tensor's bytes
are appended), so two SDXL files merge holding a few tensors, never a model. Single files (A1111/LDM
names, pre-`text_model` CLIP names read as A1111 renames them) and diffusers folders (each component's
`.safetensors` files, the UNet's names mapped to LDM ones by `ldm_names`) are both merged; pickled
checkpoints are refused (convert them to .safetensors first).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from animegen.core.errors import AnimegenError
from animegen.core.files import PICKLE_SUFFIXES, atomic_dir, atomic_path
from animegen.models.family import get_family

Mode = Literal["weighted_sum", "add_difference"]
MODES: tuple[str, ...] = ("weighted_sum", "add_difference")
BASE, VAE, MID = "BASE", "VAE", "M00"

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_NAMES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
_INPUT = re.compile(r"(?:^|\.)input_blocks\.(\d+)\.")
_OUTPUT = re.compile(r"(?:^|\.)output_blocks\.(\d+)\.")
_COMPONENT_BLOCK = {"vae": VAE}  # diffusers folders: every other non-UNet component is BASE


class MergeError(AnimegenError):
    """Checkpoints that cannot be merged as asked (mismatched models, bad block weights, unreadable files)."""


# ------------------------------------------------------------------------------------------- blocks


def block_names(unet_config: Mapping) -> tuple[str, ...]:
    """Supermerger's block names for the UNet `unet_config` builds, BASE first and VAE last."""
    levels = len(unet_config["down_block_types"])
    layers = unet_config.get("layers_per_block", 2)
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * levels
    n_in = 1 + sum(layers) + levels - 1
    n_out = sum(n + 1 for n in layers)
    return (BASE, *(f"IN{i:02d}" for i in range(n_in)), MID, *(f"OUT{i:02d}" for i in range(n_out)), VAE)


def unet_block(ldm_key: str, n_out: int) -> str:
    """The block of a UNet weight by its LDM name (without `model.diffusion_model.`); `n_out` output blocks."""
    if ldm_key.startswith(("time_embed.", "label_emb.")):
        return "IN00"
    if ldm_key.startswith("out."):
        return f"OUT{n_out - 1:02d}"
    if ldm_key.startswith("middle_block."):
        return MID
    for pattern, prefix in ((_INPUT, "IN"), (_OUTPUT, "OUT")):
        m = pattern.match(ldm_key)
        if m:
            return f"{prefix}{int(m.group(1)):02d}"
    raise MergeError(f"UNet weight {ldm_key!r} is in no supermerger block (not input_blocks / middle_block / "
                     "output_blocks / time_embed / label_emb / out)")


def block_of(key: str, unet_config: Mapping) -> str | None:
    """The block of one single-file (LDM) key: a UNet block, BASE (text encoders), VAE, or None (not merged)."""
    from animegen.models.ldm_names import TEXT_ENCODER_PREFIXES, UNET_PREFIX, VAE_PREFIX

    if key.startswith(UNET_PREFIX):
        n_out = sum(1 for b in block_names(unet_config) if b.startswith("OUT"))
        return unet_block(key[len(UNET_PREFIX):], n_out)
    if key.startswith(VAE_PREFIX):
        return VAE
    te_prefixes = tuple({p for fam in TEXT_ENCODER_PREFIXES.values() for p in fam.values()})
    return BASE if key.startswith(te_prefixes) else None


def block_weights(text: str, unet_config: Mapping) -> dict[str, float]:
    """Supermerger's comma list of block weights (BASE first, then IN…, M00, OUT…; VAE optional last)."""
    names = block_names(unet_config)
    try:
        values = [float(v) for v in text.replace("\n", ",").split(",") if v.strip()]
    except ValueError:
        raise MergeError(f"block weights {text!r} are not comma-separated numbers") from None
    if len(values) not in (len(names) - 1, len(names)):
        raise MergeError(f"block weights need {len(names) - 1} numbers ({', '.join(names[:-1])}; VAE may follow), "
                         f"got {len(values)}")
    return dict(zip(names, values))


def _alpha_lookup(alpha: float | Mapping[str, float], unet_config: Mapping) -> Callable[[str], float]:
    if not isinstance(alpha, Mapping):
        value = float(alpha)
        return lambda block: value
    names = block_names(unet_config)
    given = {str(k).upper(): float(v) for k, v in alpha.items()}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise MergeError(f"unknown block(s) {unknown}; this model's blocks are {', '.join(names)}")
    missing = [n for n in names if n not in given and n != VAE]
    if missing:
        raise MergeError(f"block weights miss {', '.join(missing)}: name every block (VAE defaults to BASE), "
                         "or give one number for all")
    given.setdefault(VAE, given[BASE])
    return given.__getitem__


# ------------------------------------------------------------------------------------- tensor math


def merge_tensor(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, alpha: float, mode: Mode,
                 key: str = "") -> torch.Tensor:
    """One merged tensor (see the module docstring), in A's dtype and shape."""
    if not a.is_floating_point() or key.endswith("position_ids"):
        return a
    if c is None and mode == "add_difference":
        return a
    part = a
    if a.shape != b.shape:
        inpaint = a.dim() == 4 and b.dim() == 4 and a.shape[1] > b.shape[1] and (
            a.shape[:1] + a.shape[2:] == b.shape[:1] + b.shape[2:])
        if not inpaint:
            raise MergeError(f"{key}: shape {tuple(a.shape)} in A but {tuple(b.shape)} in B; the models have "
                             "different architectures")
        part = a[:, :b.shape[1]]
    if c is not None and c.shape != b.shape:
        raise MergeError(f"{key}: shape {tuple(c.shape)} in C but {tuple(b.shape)} in B")
    work = torch.promote_types(a.dtype, torch.float32)
    if mode == "weighted_sum":
        merged = (1 - alpha) * part.to(work) + alpha * b.to(work)
    elif mode == "add_difference":
        merged = part.to(work) + alpha * (b.to(work) - c.to(work))
    else:
        raise MergeError(f"unknown merge mode {mode!r}; choose {' or '.join(MODES)}")
    merged = merged.to(a.dtype)
    if part is not a:
        out = a.clone()
        out[:, :b.shape[1]] = merged
        return out
    return merged


# ------------------------------------------------------------------------------ streamed file I/O


def _open_safetensors(path: Path):
    """The one place tensors are read from (tests wrap it to count live tensors)."""
    from safetensors import safe_open

    return safe_open(str(path), framework="pt", device="cpu")


class _Reader:
    """Lazy tensors of one or more .safetensors files under canonical names (A1111's CLIP renames)."""

    def __init__(self, stack: ExitStack, files: list[Path], canonical: Callable[[list[str]], dict[str, str]]):
        self._where: dict[str, tuple[object, str]] = {}
        self.metadata: dict[str, str] = {}
        for path in files:
            if path.suffix.lower() in PICKLE_SUFFIXES:
                raise MergeError(f"{path} is a pickled checkpoint; merges stream .safetensors files only, "
                                 "convert it first")
            try:
                handle = stack.enter_context(_open_safetensors(path))
            except FileNotFoundError:
                raise MergeError(f"{path}: no such file") from None
            except Exception as exc:  # noqa: BLE001 (safetensors raises its own error types)
                raise MergeError(f"{path}: not a readable .safetensors file ({exc})") from None
            self.metadata.update(handle.metadata() or {})
            for new, old in canonical(list(handle.keys())).items():
                self._where[new] = (handle, old)

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def spec(self, key: str) -> tuple[str, list[int]]:
        handle, old = self._where[key]
        s = handle.get_slice(old)
        return s.get_dtype(), list(s.get_shape())

    def get(self, key: str) -> torch.Tensor | None:
        if key not in self._where:
            return None
        handle, old = self._where[key]
        return handle.get_tensor(old)


class _TensorStreamWriter:
    """Writes a .safetensors file tensor by tensor: the header first (from the planned dtypes and shapes),
    then each tensor's bytes in order; `finish` checks every planned tensor came."""

    def __init__(self, file, plan: list[tuple[str, str, list[int]]], metadata: Mapping[str, str]):
        header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        self._plan = []
        for key, dtype, shape in plan:
            size = _SAFETENSORS_DTYPES[dtype].itemsize
            for n in shape:
                size *= n
            header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
            self._plan.append((key, dtype, shape, size))
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._file = file
        self._next = 0
        file.write(len(raw).to_bytes(8, "little"))
        file.write(raw)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        want, dtype, shape, _ = self._plan[self._next]
        if key != want or _DTYPE_NAMES.get(tensor.dtype) != dtype or list(tensor.shape) != shape:
            raise MergeError(f"internal: tensor {key} {tensor.dtype} {tuple(tensor.shape)} does not match the "
                             f"planned {want} {dtype} {shape}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._file.write(data.numpy().tobytes())
        self._next += 1

    def finish(self) -> None:
        if self._next != len(self._plan):
            raise MergeError(f"internal: {len(self._plan) - self._next} planned tensors were not written")


def _same_names(keys: list[str]) -> dict[str, str]:
    return {k: k for k in keys}


def _a1111_names(keys: list[str]) -> dict[str, str]:
    from animegen.models.ldm_names import with_text_model_level

    return with_text_model_level({k: k for k in keys})  # type: ignore[arg-type]  (values are names here)


@dataclass
class MergeReport:
    """What a merge did: keys merged, kept from A (missing in B/C, or not merged), added from B, per block."""

    out: Path
    merged: int = 0
    kept_from_a: list[str] = field(default_factory=list)
    added_from_b: list[str] = field(default_factory=list)
    blocks: dict[str, float] = field(default_factory=dict)


def _merge_stream(a: _Reader, b: _Reader, c: _Reader | None, target: Path, block: Callable[[str], str | None],
                  alpha: Callable[[str], float], mode: Mode, report: MergeReport, *, add_b: bool,
                  keys: list[str] | None = None) -> None:
    keys = a.keys() if keys is None else keys
    extra = [k for k in b.keys() if k not in a] if add_b else []  # noqa: SIM118 (a reader, not a dict)
    plan = [(k, *a.spec(k)) for k in keys] + [(k, *b.spec(k)) for k in extra]
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        writer = _TensorStreamWriter(f, plan, a.metadata)
        for key in keys:
            ta = a.get(key)
            tb = b.get(key)
            where = block(key)
            if tb is None or where is None:
                writer.write(key, ta)
                report.kept_from_a.append(key)
                continue
            tc = c.get(key) if c is not None else None
            if c is not None and tc is None:
                writer.write(key, ta)
                report.kept_from_a.append(key)
                continue
            weight = alpha(where)
            report.blocks.setdefault(where, weight)
            writer.write(key, merge_tensor(ta, tb, tc, weight, mode, key))
            report.merged += 1
            del ta, tb, tc
        for key in extra:
            writer.write(key, b.get(key))
            report.added_from_b.append(key)
        writer.finish()


# -------------------------------------------------------------------------------------- the merge


def _unet_config_of_file(reader: _Reader) -> dict:
    from animegen.models.detect import CheckpointError, detect_architecture

    class _Lazy(Mapping):
        def __getitem__(self, key):
            value = reader.get(key)
            if value is None:
                raise KeyError(key)
            return value

        def __iter__(self) -> Iterator[str]:
            return iter(reader.keys())

        def __len__(self) -> int:
            return len(reader.keys())

        def __contains__(self, key) -> bool:
            return key in reader

    try:
        family = detect_architecture(_Lazy()).family
    except CheckpointError as exc:
        raise MergeError(str(exc)) from None
    return get_family(family).config("unet")


def unet_config_of(model: str | Path) -> dict:
    """The UNet config of a model file (its family's, detected from the keys) or diffusers folder (its own)."""
    model = Path(model)
    if model.is_dir():
        return json.loads((model / "unet" / "config.json").read_text())
    with ExitStack() as stack:
        return _unet_config_of_file(_Reader(stack, [model], _a1111_names))


def _check_paths(a: Path, b: Path, c: Path | None, out: Path, mode: Mode) -> None:
    if mode not in MODES:
        raise MergeError(f"unknown merge mode {mode!r}; choose {' or '.join(MODES)}")
    if mode == "add_difference" and c is None:
        raise MergeError("add_difference needs a third model C (A + alpha * (B - C)); give c=")
    if mode == "weighted_sum" and c is not None:
        raise MergeError("weighted_sum takes two models; drop C or use mode='add_difference'")
    models = [p for p in (a, b, c) if p is not None]
    for p in models:
        if not p.exists():
            raise MergeError(f"{p}: no such model file or folder")
    if len({p.is_dir() for p in models}) != 1:
        raise MergeError("merge single files with single files and diffusers folders with folders; convert one")
    if out.resolve() in {p.resolve() for p in models}:
        raise MergeError(f"{out} is one of the inputs; write the merge to a new path")


def merge_checkpoints(a: str | Path, b: str | Path, c: str | Path | None = None, *, mode: Mode = "weighted_sum",
                      alpha: float | Mapping[str, float] = 0.5, out: str | Path) -> MergeReport:
    """Merge checkpoint files (or diffusers folders) A and B (and C) into `out`, streamed; see the module doc.

    `alpha`: one weight, or {block: weight} naming every block of `block_names` (VAE optional).
    """
    a, b, out = Path(a), Path(b), Path(out)
    c = Path(c) if c is not None else None
    _check_paths(a, b, c, out, mode)
    report = MergeReport(out=out)
    if a.is_dir():
        _merge_folders(a, b, c, out, mode, alpha, report)
        return report
    if out.suffix.lower() != ".safetensors":
        raise MergeError(f"{out}: merged single files are written as .safetensors; change the name")
    with ExitStack() as stack:
        ra, rb = (_Reader(stack, [p], _a1111_names) for p in (a, b))
        rc = _Reader(stack, [c], _a1111_names) if c is not None else None
        unet_config = _unet_config_of_file(ra)
        lookup = _alpha_lookup(alpha, unet_config)
        _merge_stream(ra, rb, rc, out, lambda k: block_of(k, unet_config), lookup, mode, report, add_b=True)
    return report


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors"))


def _merge_folders(a: Path, b: Path, c: Path | None, out: Path, mode: Mode, alpha, report: MergeReport) -> None:
    from animegen.models.ldm_names import unet_path_to_ldm

    if not (a / "model_index.json").is_file():
        raise MergeError(f"{a} is not a diffusers model folder (no model_index.json)")
    unet_config = json.loads((a / "unet" / "config.json").read_text())
    lookup = _alpha_lookup(alpha, unet_config)
    n_out = sum(1 for x in block_names(unet_config) if x.startswith("OUT"))

    def unet_block_of(key: str) -> str:
        module = key.rpartition(".")[0]
        return unet_block(unet_path_to_ldm(module, unet_config), n_out)

    with atomic_dir(out) as tmp:
        for entry in sorted(a.iterdir()):
            if not entry.is_dir():
                shutil.copy2(entry, tmp / entry.name)
                continue
            files = _weight_files(entry)
            others = [p for p in entry.iterdir() if p not in files]
            (tmp / entry.name).mkdir()
            for p in others:
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / entry.name / p.name)
            if not files:
                continue
            fb = _weight_files(b / entry.name)
            fc = _weight_files(c / entry.name) if c is not None else []
            if not fb or (c is not None and not fc):
                raise MergeError(f"{entry.name}: {b if not fb else c} has no .safetensors weights for this "
                                 "component; the models must have the same components")
            block = unet_block_of if entry.name == "unet" else (lambda k, n=entry.name: _COMPONENT_BLOCK.get(n, BASE))
            with ExitStack() as stack:
                rb = _Reader(stack, fb, _same_names)
                rc = _Reader(stack, fc, _same_names) if c is not None else None
                for file in files:  # A's sharding is kept: one output file per A file, A's keys
                    ra = _Reader(stack, [file], _same_names)
                    _merge_stream(ra, rb, rc, tmp / entry.name / file.name, block, lookup, mode, report,
                                  add_b=False)


__all__ = ["MODES", "MergeError", "MergeReport", "block_names", "block_of", "block_weights", "merge_checkpoints",
           "merge_tensor", "unet_block", "unet_config_of"]
