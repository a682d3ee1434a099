"""Textual-inversion embeddings as A1111 1.10 loads them: files, names, and whether they fit the model.

An embedding is a few learned token vectors (EasyNegative, bad_prompt, a character) used by writing its
name in a prompt. As in A1111 (`modules/textual_inversion/textual_inversion.py`):

* The name is the file stem; a prompt names it as a word, matched on token ids (so case-insensitive, and
  a whole-token match: `easynegative` does not match inside `easynegatives`), the longest name first.
* Files: `.safetensors`, `.pt` and `.bin`, anywhere under the embeddings folder; empty files are skipped.
  Accepted layouts: A1111's `{"string_to_param": {"*": (N, C)}}` (.pt), one tensor under any key
  (kohya's `emb_params` .safetensors, diffusers' `learned_embeds` `{token: (C,) or (N, C)}` .bin/.safetensors)
  and SDXL's `{"clip_l": (N, 768), "clip_g": (N, 1280)}`: each SDXL encoder gets its own vectors.
* `.pt` / `.bin` are pickles: refused unless `allow_pickle`, then read weights-only (`core.files` policy).
* "TI hashes" infotext: `name: first 12 hex digits of the file's sha256`, with `:` and `,` taken out of the name.
* `/sdapi/v1/embeddings` lists `loaded` (fits this model) and `skipped` (another family or width) with
  A1111's fields (step, sd_checkpoint, sd_checkpoint_name, shape = summed widths, vectors).

Where we deliberately differ:
* A prompt naming an embedding that does not fit the model (an SD1 file on SDXL, a 768-wide file on a
  1024-wide encoder), or whose file cannot be read, is an error naming the file and what the model expects.
  A1111 skips such files and silently encodes the name as plain text.
* Embeddings stored inside PNG/WEBP images (A1111's `sd-ti-embedding` chunk) are not read.
* On duplicate stems the first file in sorted path order wins, with a warning (A1111: whichever it met last).
* "TI hashes" lists each embedding once, positive prompt first; A1111 repeats names used in both prompts
  (and, on SDXL, once per text encoder).

How the vectors enter the text encoder (in place of the name's tokens, not split across 75-token chunks)
is `prompts.encode`'s job.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from animegen.core.errors import AnimegenError
from animegen.core.files import PICKLE_SUFFIXES, load_torch_file, read_safetensors, sha256_file
from animegen.models.family import get_family

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
SDXL_KEYS = ("clip_l", "clip_g")
"""SDXL embedding keys, in the order of the pipeline's text encoders (CLIP-L, then OpenCLIP-bigG)."""


class EmbeddingError(AnimegenError):
    """An embedding file that cannot be read, or that does not fit the model it is used with."""


@dataclass(frozen=True)
class EncoderSlot:
    """One text encoder as embeddings see it: the key of its vectors in SDXL files, its width, its name."""

    key: str | None  # "clip_l" / "clip_g" on SDXL; None for one-encoder families (the file's one tensor)
    width: int
    description: str  # "CLIP-L", "OpenCLIP-bigG", ...


def encoder_slots(arch: str, text_encoders: Sequence[torch.nn.Module]) -> list[EncoderSlot]:
    """The slots of a model's text encoders (SDXL's refiner has only the second one, clip_g)."""
    family = get_family(arch)
    specs = family.text_encoders[-len(text_encoders):]
    keys = SDXL_KEYS[-len(text_encoders):] if family.is_sdxl else (None,) * len(text_encoders)
    return [EncoderSlot(key, enc.get_input_embeddings().weight.shape[1], spec.description)
            for key, enc, spec in zip(keys, text_encoders, specs)]


def _as_matrix(value: Any, path: Path, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() not in (1, 2) \
            or value.numel() == 0:
        found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise EmbeddingError(f"{path}: {what} must be a float tensor of shape (vectors, width), found {found}; "
                             "this is not a textual-inversion embedding")
    return value.detach().to("cpu", torch.float32).reshape(-1, value.shape[-1])


@dataclass(eq=False)
class Embedding:
    """One embedding file: `vectors` is one (N, C) tensor, or {"clip_l": (N, C1), "clip_g": (N, C2)} for SDXL."""

    name: str
    path: Path
    vectors: torch.Tensor | dict[str, torch.Tensor]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    _hash: str | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        """How many token positions it takes (A1111's `vectors`)."""
        tensors = self.vectors.values() if isinstance(self.vectors, dict) else [self.vectors]
        return next(iter(tensors)).shape[0]

    @property
    def shape(self) -> int:
        """A1111's `shape`: the vector width, summed over SDXL's two encoders."""
        tensors = self.vectors.values() if isinstance(self.vectors, dict) else [self.vectors]
        return sum(t.shape[1] for t in tensors)

    @property
    def short_hash(self) -> str:
        """A1111's shorthash: the first 12 hex digits of the file's sha256."""
        if self._hash is None:
            self._hash = sha256_file(self.path, cached=False)[:12]
        return self._hash

    def _describe(self) -> str:
        if isinstance(self.vectors, dict):
            return "an SDXL embedding (" + " + ".join(f"{k} {v.shape[1]} wide" for k, v in self.vectors.items()) + ")"
        return f"a one-encoder (SD1/SD2) embedding, {self.vectors.shape[1]} wide"

    def fit_problem(self, slots: Sequence[EncoderSlot], model: str) -> str | None:
        """Why this embedding cannot be used with text encoders `slots` of a `model` ("SDXL"...), or None."""
        where = f"embedding {self.name!r} ({self.path})"
        wants = " and ".join(f"{s.key + ' ' if s.key else ''}{s.width} wide ({s.description})" for s in slots)
        if isinstance(self.vectors, dict) != (slots[0].key is not None):
            fix = "an SDXL embedding" if slots[0].key else "an embedding made for SD1/SD2"
            return f"{where} is {self._describe()}; this {model} model needs {wants}: use {fix}"
        for slot in slots:
            vec = self.vectors[slot.key] if slot.key else self.vectors
            if vec.shape[1] != slot.width:
                return (f"{where} is {self._describe()}; this {model} model needs {wants}: "
                        "it was made for another model family")
        return None

    def vectors_for(self, slot: EncoderSlot, slots: Sequence[EncoderSlot], model: str) -> torch.Tensor:
        """The (N, C) vectors for one text encoder; EmbeddingError when the file does not fit the model."""
        problem = self.fit_problem(slots, model)
        if problem:
            raise EmbeddingError(problem)
        return self.vectors[slot.key] if slot.key else self.vectors


def read_embedding(path: str | os.PathLike, *, allow_pickle: bool = False, name: str | None = None) -> Embedding:
    """Read one embedding file in any layout A1111 1.10 reads (see the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise EmbeddingError(f"{path}: not an embedding file; expected one of {', '.join(EMBEDDING_SUFFIXES)}")
    if suffix in PICKLE_SUFFIXES:
        data = load_torch_file(path, allow_pickle=allow_pickle)
    else:
        data, _ = read_safetensors(path)
    if not isinstance(data, Mapping) or not data:
        raise EmbeddingError(f"{path}: holds {type(data).__name__ if not isinstance(data, Mapping) else 'nothing'}, "
                             "not a textual-inversion embedding")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if "string_to_param" in data:  # A1111's own .pt
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise EmbeddingError(f"{path}: string_to_param must hold exactly one term, found "
                                 f"{len(params) if isinstance(params, Mapping) else type(params).__name__}")
        vectors: torch.Tensor | dict[str, torch.Tensor] = _as_matrix(next(iter(params.values())), path,
                                                                     "string_to_param")
    elif all(k in tensors for k in SDXL_KEYS):
        vectors = {k: _as_matrix(tensors[k], path, k) for k in SDXL_KEYS}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise EmbeddingError(f"{path}: clip_l has {vectors['clip_l'].shape[0]} vectors but clip_g "
                                 f"{vectors['clip_g'].shape[0]}; an SDXL embedding has as many of each")
    elif len(tensors) == 1:  # kohya `emb_params`, diffusers `{token: tensor}`
        key, value = next(iter(tensors.items()))
        vectors = _as_matrix(value, path, repr(key))
    else:
        keys = ", ".join(sorted(map(str, data))[:6]) + (", ..." if len(data) > 6 else "")
        raise EmbeddingError(f"{path}: not a textual-inversion embedding (expected 'string_to_param', "
                             f"'clip_l' + 'clip_g', or a single tensor such as 'emb_params'; found {keys})")

    def meta(key: str) -> Any:
        value = data.get(key)
        return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None

    return Embedding(name or path.stem, path, vectors, step=meta("step"), sd_checkpoint=meta("sd_checkpoint"),
                     sd_checkpoint_name=meta("sd_checkpoint_name"))


class EmbeddingLibrary:
    """The embeddings a generator knows: files registered by path, plus every file under `folder`.

    Names are re-listed on every use (a file dropped in the folder works at the next prompt, as A1111's
    reload on change); a file is read when a prompt first uses it, then cached until it changes.
    `inside_only` (the server) ignores files whose real path leaves the folder (symlinks out of it).
    """

    def __init__(self, folder: str | os.PathLike | None = None, *, allow_pickle: bool = False,
                 inside_only: bool = False):
        self.folder = Path(folder) if folder else None
        self.allow_pickle = allow_pickle
        self.inside_only = inside_only
        self._registered: dict[str, Path] = {}
        self._cache: dict[tuple[str, int, int], Embedding] = {}
        self._name_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def register(self, path: str | os.PathLike) -> str:
        """Make one file usable by its stem (read now, so a bad file fails here); returns the name."""
        embedding = self._read(Path(path), Path(path).stem)
        self._registered[embedding.name] = embedding.path
        return embedding.name

    def _folder_files(self) -> list[Path]:
        if self.folder is None or not self.folder.is_dir():
            return []
        real_root = Path(os.path.realpath(self.folder))
        found = []
        for dirpath, dirnames, filenames in os.walk(self.folder, followlinks=not self.inside_only):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if full.suffix.lower() not in EMBEDDING_SUFFIXES:
                    continue
                if self.inside_only and not Path(os.path.realpath(full)).is_relative_to(real_root):
                    continue
                try:
                    if full.is_file() and full.stat().st_size > 0:  # A1111 skips empty files
                        found.append(full)
                except OSError:
                    continue
        return found

    def names(self) -> dict[str, Path]:
        """Every usable name and its file: registered files first, then the folder (first stem wins)."""
        found = dict(self._registered)
        duplicates = []
        for path in self._folder_files():
            if path.stem in found:
                if found[path.stem] != path and path.stem not in self._registered:
                    duplicates.append(path)
                continue
            found[path.stem] = path
        for path in duplicates:
            log.warning("embedding %s ignored: %s is already named %r", path, found[path.stem], path.stem)
        return found

    def _read(self, path: Path, name: str) -> Embedding:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise EmbeddingError(f"embedding file {path} not found") from None
        key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
        if key not in self._cache:
            self._cache[key] = read_embedding(path, allow_pickle=self.allow_pickle, name=name)
        return self._cache[key]

    def get(self, name: str) -> Embedding:
        """The embedding called `name`, read (or from the cache)."""
        known = self.names()
        if name not in known:
            raise EmbeddingError(f"no embedding named {name!r}; known: {', '.join(sorted(known)) or 'none'}")
        return self._read(known[name], name)

    def matcher(self, tokenizer):
        """A function `(token ids, position) -> (Embedding, tokens its name takes) | None` for one tokenizer,
        matching names by their token ids, longest first (A1111's `find_embedding_at_position`)."""
        names = self.names()
        if not names:
            return None
        try:
            cached = self._name_ids.setdefault(tokenizer, {})
        except TypeError:  # not weak-referenceable: no cache
            cached = {}
        missing = [n for n in names if n not in cached]
        if missing:
            ids = tokenizer(missing, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
            cached.update(zip(missing, ids))
        by_first: dict[int, list[tuple[list[int], str]]] = {}
        for name in names:
            if cached[name]:
                by_first.setdefault(cached[name][0], []).append((cached[name], name))
        for candidates in by_first.values():
            candidates.sort(key=lambda item: len(item[0]), reverse=True)

        def match(tokens: Sequence[int], position: int) -> tuple[Embedding, int] | None:
            for ids, name in by_first.get(tokens[position], ()):
                if list(tokens[position:position + len(ids)]) == ids:
                    return self._read(names[name], name), len(ids)
            return None

        return match

    def infotext_hashes(self, pipe, texts: Sequence[str], emphasis: str = "Original") -> str | None:
        """A1111's "TI hashes" value for the embeddings `texts` (prompt, then negative) use; None if none."""
        from animegen.prompts.encode import pipeline_text_modules, tokenize_prompt

        if not self.names():
            return None
        tokenizer = pipeline_text_modules(pipe)[0][0]
        used: dict[str, Embedding] = {}
        for text in texts:
            for chunk in tokenize_prompt(tokenizer, text, emphasis, embeddings=self):
                for _, embedding in chunk.fixes:
                    used.setdefault(embedding.name, embedding)
        parts = [f"{name.replace(':', '').replace(',', '')}: {e.short_hash}" for name, e in used.items()]
        return ", ".join(parts) or None

    def listing(self, pipe) -> dict[str, dict[str, dict[str, Any]]]:
        """A1111's `GET /sdapi/v1/embeddings`: {"loaded": {name: info}, "skipped": {name: info}} for `pipe`."""
        from animegen.prompts.encode import pipeline_text_modules

        _, encoders, arch = pipeline_text_modules(pipe)
        slots, model = encoder_slots(arch, encoders), get_family(arch).display_name
        out: dict[str, dict[str, dict[str, Any]]] = {"loaded": {}, "skipped": {}}
        for name, path in sorted(self.names().items(), key=lambda item: item[0].lower()):
            try:
                e = self._read(path, name)
            except AnimegenError as exc:  # unreadable or pickled: listed as skipped, the reason logged
                log.warning("embedding %s skipped: %s", path, exc)
                out["skipped"][name] = dict.fromkeys(("step", "sd_checkpoint", "sd_checkpoint_name", "shape",
                                                      "vectors"))
                continue
            info = {"step": e.step, "sd_checkpoint": e.sd_checkpoint, "sd_checkpoint_name": e.sd_checkpoint_name,
                    "shape": e.shape, "vectors": e.count}
            out["skipped" if e.fit_problem(slots, model) else "loaded"][name] = info
        return out


__all__ = ["EMBEDDING_SUFFIXES", "Embedding", "EmbeddingError", "EmbeddingLibrary", "EncoderSlot",
           "encoder_slots", "read_embedding"]
