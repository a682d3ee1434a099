"""The one home for touching files: atomic writes, cached hashes, the cache root, image extensions, and
the pickle policy for reading weights.

Reading: file hashes and images (`data.image_io`) are read through `open_regular_file`, so a FIFO,
socket or device named `x.png` (or a symlink to `/dev/zero`) raises `NotRegularFileError` instead of
blocking forever or never reaching EOF, and an optional byte limit stops giant files early.

Atomic writes (`atomic_write`, `atomic_path`, `atomic_dir`): the data goes to a uniquely named temp
entry in the target's own folder (so two writers of one target never share a temp name, and the final
`os.replace` never crosses a file system), is fsynced, then renamed over the target; on any failure the
temp entry is removed and the target is untouched. Before the rename every written file gets mode
`0o666 & ~umask` (folders `0o777 & ~umask`), what `open(path, "w")` would give: `tempfile.mkstemp` and
safetensors' own `save_file` (which writes through a private temp file) both make 0600 files, which
left exported LoRAs, single files and checkpoints unreadable to other users.

The umask is read from `/proc/self/status` (Linux >= 4.7) on every write, which changes nothing; only
where that file is missing is it read once, at import, by the `os.umask` swap (which briefly changes
the process-wide umask and so could race with other threads; at import time there are none of ours).

Pickle policy: `.ckpt/.pt/.pth/.bin` files are Python pickles that can run code when opened. They are
refused unless the caller allows them, and even then read with `torch.load(weights_only=True)`, which
only rebuilds tensors and plain containers. Every `torch.load` in animegen goes through
`load_torch_file`.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, NoReturn

from animegen.core.errors import AnimegenError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# ----------------------------------------------------------------------------------- atomic writes


def _umask_from_proc() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_by_swap() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_from_proc()
if _IMPORT_UMASK is None:
    _IMPORT_UMASK = _umask_by_swap()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (see the module docstring)."""
    mask = _umask_from_proc()
    return _IMPORT_UMASK if mask is None else mask


def _give_default_mode(path: Path) -> None:
    """Mode `0o666 & ~umask` for files, `0o777 & ~umask` for folders (recursively): what open()/mkdir give."""
    mask = current_umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for entry in path.rglob("*"):
            if not entry.is_symlink():
                os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def _temp_sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.{kind}")


def _create_temp_file(target: Path) -> Path:
    for _ in range(100):
        tmp = _temp_sibling(target, "tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(_errno.EEXIST, "no free temp name", str(target))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; not possible (nor needed) on every platform."""
    if hasattr(os, "O_DIRECTORY"):
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _raise_naming(exc: BaseException, target: Path) -> NoReturn:
    """Re-raise `exc`; an OS error names the user's `target` instead of a temp name (or no name at all)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        raise exc
    raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_path(target) as tmp: save_file(tensors, tmp)` — `target` appears complete or not at all.

    The temp file already exists (empty) when the block starts; writers that take a path or open the
    file themselves both work, whatever mode they create it with. Missing parent folders are created.
    OS errors name `target`.
    """
    target = Path(target)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp_file(target)
        yield tmp
        _give_default_mode(tmp)
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException as exc:  # noqa: BLE001 (always re-raised, by _raise_naming)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _raise_naming(exc, target)
    _fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (str is UTF-8 encoded) to `path` atomically; see the module docstring."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(payload)
    return path


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_dir(final) as tmp: write files into tmp` — `final` appears complete or not at all.

    A previous folder of the same name is replaced only after the new one is fully written (it is
    renamed aside, the new one renamed in, then the old one removed), so a failure leaves it intact.
    """
    target = Path(target)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(target, "tmpdir")
        os.mkdir(tmp, 0o777)  # the kernel applies the umask (mkdtemp would make it 0700)
        yield tmp
        _give_default_mode(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync(file)
        old = None
        if target.exists():
            old = _temp_sibling(target, "old")
            os.replace(target, old)
        os.replace(tmp, target)
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:  # noqa: BLE001 (always re-raised, by _raise_naming)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _raise_naming(exc, target)
    _fsync_dir(target.parent)


def writable_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` (and parents) and prove it takes a new file, so a command fails before its work.

    Permissions alone cannot say (root ignores them, ACLs and read-only mounts add to them), so this
    creates and removes a temp file; the OSError it raises names the folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _create_temp_file(folder / ".write-test").unlink()
    except OSError as exc:
        _raise_naming(exc, folder)
    return folder


# ----------------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """animegen's cache folder: `$ANIMEGEN_CACHE`, else `$XDG_CACHE_HOME/animegen`, else `~/.cache/animegen`."""
    explicit = os.environ.get("ANIMEGEN_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "animegen"


# ----------------------------------------------------------------------------------- reading files


class NotRegularFileError(AnimegenError):
    """A FIFO, socket, device or folder where a file's bytes were wanted: reading it could block forever."""

    def __init__(self, path: str | os.PathLike, kind: str):
        self.path, self.kind = str(path), kind
        self.reason = f"not a regular file ({kind})"
        super().__init__(f"{path}: {self.reason}; give a regular file")


class FileTooLargeError(AnimegenError):
    """A file above the caller's byte limit (a giant or endless file must not be read to its end)."""

    def __init__(self, path: str | os.PathLike, size: int, max_bytes: int):
        self.path, self.size, self.max_bytes = str(path), size, max_bytes
        self.reason = f"too large: {size} bytes exceeds the limit of {max_bytes} bytes"
        super().__init__(f"{path}: {self.reason}")


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return kind
    return "special file"


def stat_regular_file(path: str | os.PathLike) -> os.stat_result:
    """`os.stat(path)` (symlinks followed), raising `NotRegularFileError` unless it is a regular file."""
    result = os.stat(path)
    if not stat.S_ISREG(result.st_mode):
        raise NotRegularFileError(path, _file_kind(result.st_mode))
    return result


@contextlib.contextmanager
def open_regular_file(path: str | os.PathLike, *, max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """Open `path` (symlinks followed) for binary reading only if it is a regular file of <= `max_bytes`.

    Raises `NotRegularFileError` for a FIFO, socket, device or folder, before anything can block: the path
    is stat()ed first, then opened with O_NONBLOCK (a FIFO swapped in meanwhile cannot block the open) and
    checked again on the open descriptor. Raises `FileTooLargeError` above `max_bytes`.
    """
    path = os.fspath(path)
    stat_regular_file(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, _file_kind(st.st_mode))
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileTooLargeError(path, st.st_size, max_bytes)
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


# ----------------------------------------------------------------------------------- hashes


def _sha256_bytes(path: Path, max_bytes: int | None = None, safetensors_payload: bool = False) -> str:
    with open_regular_file(path, max_bytes=max_bytes) as f:
        digest, seen = hashlib.sha256(), 0
        if safetensors_payload:  # 8-byte little-endian header length, the JSON header, then the tensors
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        while chunk := f.read(1 << 20):
            seen += len(chunk)
            if max_bytes is not None and seen > max_bytes:  # it grew while being read
                raise FileTooLargeError(path, seen, max_bytes)
            digest.update(chunk)
        return digest.hexdigest()


#: This process's layer of the `sha256_file` cache: key (resolved path|size|mtime_ns[|payload]) -> hex digest.
_HASHES_SEEN: dict[str, str] = {}


def sha256_file(path: str | os.PathLike, *, cached: bool = True, max_bytes: int | None = None,
                safetensors_payload: bool = False) -> str:
    """sha256 hex of a file's bytes, cached by (resolved path, size, mtime_ns) so multi-GB checkpoints hash once.

    The cache has two layers: this process's memory (so a LoRA named in every image of a request is hashed
    once, not once per image, and without re-reading the cache file each time), then `hashes.json` under
    `cache_root()` (so the next process does not hash again). A changed file has a new key and is hashed
    again; a cache root that cannot be written costs one hash per file per process.

    `safetensors_payload=True` hashes only the tensor bytes after a .safetensors file's header (A1111's
    `addnet_hash_safetensors`, the LoRA hash of infotext: editing the metadata does not change it).

    `cached=False` for bulk hashing of many small files (dataset images): one cache entry per image
    would only grow the cache file, and reading an image costs little more than a lookup. Only regular
    files are read (`open_regular_file`): a FIFO or `/dev/zero` raises instead of blocking or never ending;
    `max_bytes` bounds how much is read (`FileTooLargeError` above it).
    """
    path = Path(path)
    if not cached:
        return _sha256_bytes(path, max_bytes, safetensors_payload)
    stat_result = path.stat()
    key = f"{path.resolve()}|{stat_result.st_size}|{stat_result.st_mtime_ns}"
    key += "|payload" if safetensors_payload else ""
    if key in _HASHES_SEEN:
        return _HASHES_SEEN[key]
    cache_path = cache_root() / "hashes.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    if key not in cache:
        cache[key] = _sha256_bytes(path, max_bytes, safetensors_payload)
        with contextlib.suppress(OSError):  # a read-only home only costs re-hashing in the next process
            atomic_write(cache_path, json.dumps(cache))
    _HASHES_SEEN[key] = cache[key]
    return cache[key]


# ----------------------------------------------------------------------------------- image extensions

# Every extension any reader in animegen ever scanned for; kept only where Pillow here can decode it.
_CANDIDATE_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif",
                               ".tiff", ".avif", ".heic", ".heif", ".jxl")


def _decodable_extensions() -> frozenset[str]:
    from PIL import Image

    registered = Image.registered_extensions()  # runs Image.init(): every installed plugin registers
    return frozenset(e for e in _CANDIDATE_IMAGE_EXTENSIONS if registered.get(e) in Image.OPEN)


#: File extensions every image scanner picks up (data ingest, kohya folders, evaluation folders): the
#: common image formats that Pillow, as installed here, can decode. The extension only selects
#: candidates; content is still sniffed by `data.image_io.open_image`.
IMAGE_EXTENSIONS: frozenset[str] = _decodable_extensions()


def is_image_file(path: str | os.PathLike) -> bool:
    """A candidate image by extension (case-insensitive); not a check of the content."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------------- reading weights


class PickleRefusedError(AnimegenError):
    """A pickled file was given without explicit permission to unpickle it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        super().__init__(
            f"{self.path} is a pickled file ({self.path.suffix or 'no suffix'}); unpickling can run arbitrary "
            "code, so it is refused. Convert it to .safetensors, or pass --allow-pickle (allow_pickle=True) "
            "if you trust its source: only its tensors are read (torch.load with weights_only=True)."
        )


class WeightsFileError(AnimegenError):
    """A weights file that exists but cannot be read (truncated, foreign, or holding code)."""


def refuse_pickle_unless_allowed(path: str | os.PathLike, allow_pickle: bool) -> None:
    """The policy's gate by file type, for callers that check before any loading work starts."""
    if not allow_pickle and Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise PickleRefusedError(path)


def load_torch_file(path: str | os.PathLike, *, allow_pickle: bool, map_location="cpu"):
    """`torch.load` under the pickle policy: refused unless allowed, then always `weights_only=True`."""
    path = Path(path)
    if not allow_pickle:
        raise PickleRefusedError(path)
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsFileError(
            f"{path}: refused by the weights-only loader, it holds more than tensors ({reason}); "
            "re-create it with a trusted tool or convert it to .safetensors") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise WeightsFileError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc}); "
                               "the file may be truncated, download or write it again") from None


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """(tensors, header metadata) of a .safetensors file, on the CPU; a clear error when truncated."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, metadata  # noqa: SIM118 (not a dict)
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsFileError(f"{path}: not a readable .safetensors file ({exc}); the file may be "
                               "truncated, download or write it again") from None


def read_weights(path: str | os.PathLike, *, allow_pickle: bool) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a `.safetensors` file, or of a pickled one under the pickle policy.

    A pickled file's top-level `state_dict` entry (the old A1111/Lightning layout) is unwrapped, and
    only tensor values are kept; pickles carry no metadata.
    """
    import torch

    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return read_safetensors(path)
    obj = load_torch_file(path, allow_pickle=allow_pickle)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, {}


__all__ = [
    "IMAGE_EXTENSIONS",
    "PICKLE_SUFFIXES",
    "FileTooLargeError",
    "NotRegularFileError",
    "PickleRefusedError",
    "WeightsFileError",
    "atomic_dir",
    "atomic_path",
    "atomic_write",
    "cache_root",
    "current_umask",
    "is_image_file",
    "load_torch_file",
    "open_regular_file",
    "read_safetensors",
    "read_weights",
    "refuse_pickle_unless_allowed",
    "sha256_file",
    "stat_regular_file",
    "writable_folder",
]


#: A safetensors header larger than this is not a real model's (SDXL's is ~200 KB): refuse, don't allocate.
MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024


def safetensors_metadata(path: str | os.PathLike) -> dict:
    """A safetensors file's `__metadata__`, read from its header only (never the tensors); values that hold a JSON
    object are parsed, as A1111's `read_metadata_from_safetensors`. Raises `WeightsFileError` naming the file when
    the header cannot be read; listings that must survive one bad file catch it."""
    import struct

    path = Path(path)
    try:
        with open_regular_file(path) as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_SAFETENSORS_HEADER_BYTES:
                raise ValueError(f"header of {size} bytes exceeds {MAX_SAFETENSORS_HEADER_BYTES}")
            header = json.loads(f.read(size))
        metadata = dict(header.get("__metadata__") or {})
    except (OSError, ValueError, struct.error, AttributeError) as exc:
        raise WeightsFileError(f"{path}: cannot read its safetensors header ({exc})") from exc
    for key, value in metadata.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                metadata[key] = json.loads(value)
            except ValueError:
                pass
    return metadata
