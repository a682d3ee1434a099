"""Where generated images go: the one home for output folders, file names and numbering.

Every front end that writes images to disk (the `generate` command, the web UI, the demo) asks an
`OutputLayout` for the path and writes with `save_generated` / `OutputLayout.save`, so the layout is
the same everywhere and users' tools (image browsers, A1111 extensions, scripts) find the files:

  layout "a1111" (the default), A1111's own tree under the output root, one folder per local day:
      ROOT/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png     ROOT/txt2img-grids/YYYY-MM-DD/grid-NNNN.png
      ROOT/img2img-images/YYYY-MM-DD/NNNNN-SEED.png     ROOT/img2img-grids/YYYY-MM-DD/grid-NNNN.png
  layout "flat", everything in ROOT itself (animegen's layout before 0.x; `--layout flat`).

Numbering is A1111's (`modules.images.get_next_sequence_number`): per folder, one more than the highest
leading number of any file there (images `00012-...`, any extension; grids `grid-0003...`), so it continues
after a restart, after files from A1111 itself, and after deleted gaps; a new day folder starts at 0.
Grids are named as A1111 names them with its default settings (`grid-NNNN.png`, no seed).

`OutputLayout.save` never overwrites and never shows a half-written image: the PNG is written complete to
a hidden temp file, then, holding an exclusive `flock` on the folder itself (no lock file; writers in
other threads and processes, e.g. a second command and the web UI, wait their turn; where `flock` does
not exist, only this process's threads are ordered), the number is counted and the file hard-linked to
its name, which fails rather than replace a file that a writer outside animegen put there first. `save_generated(image, path)` writes one PNG at a given path (atomic,
A1111 `parameters` infotext) through `infotext.save_png`, the one PNG writer.

This module imports no torch (the CLI's light commands and the web UI's startup read it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import threading
from datetime import date
from pathlib import Path
from typing import Literal

from animegen.core.errors import AnimegenError
from animegen.generate.infotext import save_png

Kind = Literal["txt2img", "img2img"]
Layout = Literal["a1111", "flat"]
KINDS: tuple[str, ...] = ("txt2img", "img2img")
LAYOUTS: tuple[str, ...] = ("a1111", "flat")
DEFAULT_LAYOUT: Layout = "a1111"
GRID_BASENAME = "grid"

_LEADING_NUMBER = re.compile(r"^(\d+)")


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise AnimegenError(f"output {what} {value!r} is not one animegen knows; use one of: {', '.join(allowed)}")
    return value


def _next_number(folder: Path, basename: str) -> int:
    """A1111's `get_next_sequence_number`: 1 + the highest leading number after `basename-` (0 if none)."""
    prefix = f"{basename}-" if basename else ""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    highest = -1
    for name in names:
        if name.startswith(prefix):
            match = _LEADING_NUMBER.match(name[len(prefix):])
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def _file_name(number: int, seed: int, grid: bool) -> str:
    return f"{GRID_BASENAME}-{number:04d}.png" if grid else f"{number:05d}-{seed}.png"


class OutputLayout:
    """Where the images of one output root go; see the module docstring for the two layouts."""

    def __init__(self, root: str | os.PathLike, layout: Layout = DEFAULT_LAYOUT):
        self.root = Path(root)
        self.layout: Layout = _choice("layout", layout, LAYOUTS)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OutputLayout({str(self.root)!r}, {self.layout!r})"

    def folder(self, kind: Kind, grid: bool = False, day: date | None = None) -> Path:
        """The folder images (or grids) of `kind` made on `day` (default: today, local time) go to."""
        _choice("kind", kind, KINDS)
        if self.layout == "flat":
            return self.root
        return self.root / f"{kind}-{'grids' if grid else 'images'}" / (day or date.today()).isoformat()

    def next_path(self, kind: Kind, seed: int, grid: bool = False, day: date | None = None) -> Path:
        """The next free name in `folder(kind, grid, day)`: `NNNNN-SEED.png`, or `grid-NNNN.png` for a grid."""
        folder = self.folder(kind, grid, day)
        return folder / _file_name(_next_number(folder, GRID_BASENAME if grid else ""), seed, grid)

    def save(self, generated, kind: Kind, grid: bool = False, day: date | None = None) -> Path:
        """Write `generated` (`.image`, `.infotext`, `.seed`) under the next free number; never overwrites."""
        folder = self.folder(kind, grid, day)
        seed = getattr(generated, "seed", 0)
        staged = save_generated(generated, folder / f".{seed}.{secrets.token_hex(6)}.staged")
        try:
            with _numbering_lock(folder):
                number = _next_number(folder, GRID_BASENAME if grid else "")
                for _ in range(10_000):
                    target = folder / _file_name(number, seed, grid)
                    if _claim(staged, target):
                        return target
                    number += 1
        finally:
            staged.unlink(missing_ok=True)
        raise AnimegenError(f"{folder}: no free image number after 10000 tries; choose another output folder")


_THREAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _numbering_lock(folder: Path):
    """Exclusive right to number files in `folder`: this process's threads, and (flock) other processes."""
    with _THREAD_LOCK:
        try:
            import fcntl
        except ImportError:  # Windows: threads only
            yield
            return
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def _claim(staged: Path, target: Path) -> bool:
    """Give the complete file `staged` the name `target` unless that name exists; False if it does."""
    try:
        os.link(staged, target)
        return True
    except FileExistsError:
        return False
    except OSError as exc:  # file systems without hard links (FAT, some network mounts): check, then rename
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        if target.exists():
            return False
        os.replace(staged, target)
        return True


def save_generated(generated, path: str | os.PathLike) -> Path:
    """Write a `GeneratedImage` (or anything with `.image` and `.infotext`) to `path`: atomic PNG, A1111
    infotext in its `parameters` chunk, missing folders created (`infotext.save_png`)."""
    return save_png(generated, path)
