"""Fuzz `animegen data ingest`: every one of >= 10,000 hostile files must become a row or a reported skip.

Why: a scraped dataset holds every kind of broken file, and one uncaught decoder exception (Pillow raises
TypeError on some corrupt TIFFs) or one hang (a FIFO named `*.png`) used to stop a whole ingest, at the same
file on every rerun (issue #12 item 10). This measures it, seeded, so a figure can be reproduced:

    python scripts/fuzz_ingest.py --count 10000 --seed 0 --work /tmp/fuzz-ingest

The files: seeded mutations (bit flips, truncations, header splices, chunk splices, magic values written
over size / offset fields, duplicated or zeroed regions) of small valid PNG / JPEG / TIFF / GIF / WEBP / BMP
files in many variants (modes, compressions, animation, EXIF), some with an extension that lies and some
with a name that is not valid UTF-8; plus special files (FIFO, socket, symlink to /dev/zero, dangling
symlink, empty file, sparse file above the byte limit), each in its own folder.

How it counts: each folder is ingested by a child process with a timeout. A child that raises (or dies of a
signal) crashed, one that times out hung; ingest records rows in scan order, so the culprit is the first
file in scan order without a row. It is counted, moved aside, and the folder ingested again (ingest
resumes), so one bad file costs one count. Printed: files tried / rows ok / error rows / duplicate rows /
skipped (reported, not rows) / crashed / hung / lost (neither row nor skip after a clean run) / seconds.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

_CHILD = """
import inspect, json, sys
from animegen.data.ingest import ingest
folder, out, max_pixels, max_bytes, workers = sys.argv[1:6]
kw = {"max_bytes": int(max_bytes)} if "max_bytes" in inspect.signature(ingest).parameters else {}  # older code
rep = ingest([folder], out, progress=False, near_duplicate_threshold=-1, max_pixels=int(max_pixels),
             workers=int(workers), **kw)
print(json.dumps({"ignored": getattr(rep, "ignored", [])}))
"""
_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp", ".bmp")
_MAGIC = (0, 1, 0xFFFF, 0x7FFF, 0x10000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF)
_NON_UTF8_EVERY = 37  # this share of the fuzzed files gets a name that is not valid UTF-8
try:
    from animegen.data.image_io import DEFAULT_MAX_BYTES as _DEFAULT_MAX_BYTES
except ImportError:  # measuring code from before the byte limit existed
    _DEFAULT_MAX_BYTES = 1 << 30


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def base_files() -> list[tuple[str, str, bytes]]:
    """(variant name, extension, bytes) of small valid images: the seeds every mutation starts from."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "RGB")
    rgba = rgb.convert("RGBA")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    grey16 = Image.fromarray(rng.integers(0, 65536, (12, 16), dtype=np.uint16))
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    out = [
        ("png-rgb", ".png", _encode(rgb, "PNG")),
        ("png-rgba", ".png", _encode(rgba, "PNG")),
        ("png-pal-trns", ".png", _encode(pal, "PNG", transparency=0)),
        ("png-i16", ".png", _encode(grey16, "PNG")),
        ("png-1bit", ".png", _encode(rgb.convert("1"), "PNG")),
        ("apng", ".png", _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])),
        ("jpeg", ".jpg", _encode(rgb, "JPEG", quality=90)),
        ("jpeg-progressive", ".jpg", _encode(rgb, "JPEG", progressive=True)),
        ("jpeg-cmyk", ".jpg", _encode(rgb.convert("CMYK"), "JPEG")),
        ("jpeg-grey-exif", ".jpg", _encode(rgb.convert("L"), "JPEG", exif=exif)),
        ("tiff-raw", ".tif", _encode(rgb, "TIFF")),
        ("tiff-lzw", ".tif", _encode(rgb, "TIFF", compression="tiff_lzw")),
        ("tiff-deflate", ".tif", _encode(rgba, "TIFF", compression="tiff_adobe_deflate")),
        ("tiff-packbits", ".tif", _encode(pal, "TIFF", compression="packbits")),
        ("tiff-g4", ".tif", _encode(rgb.convert("1"), "TIFF", compression="group4")),
        ("tiff-jpeg", ".tif", _encode(rgb, "TIFF", compression="jpeg")),
        ("tiff-cmyk", ".tif", _encode(rgb.convert("CMYK"), "TIFF")),
        ("tiff-i16", ".tif", _encode(grey16, "TIFF")),
        ("tiff-pages", ".tif", _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])),
        ("gif", ".gif", _encode(pal, "GIF")),
        ("gif-anim", ".gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40)),
        ("webp-lossy", ".webp", _encode(rgb, "WEBP", quality=80)),
        ("webp-lossless", ".webp", _encode(rgba, "WEBP", lossless=True)),
        ("webp-anim", ".webp", _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])),
        ("bmp", ".bmp", _encode(rgb, "BMP")),
        ("bmp-pal", ".bmp", _encode(pal, "BMP")),
        ("bmp-1bit", ".bmp", _encode(rgb.convert("1"), "BMP")),
    ]
    return out


def _mutate(rng: random.Random, data: bytes, others: list[bytes]) -> tuple[bytes, str]:
    """1-3 seeded mutations of `data`; returns the bytes and a short label of what was done."""
    buf = bytearray(data)
    done = []
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(("flip", "flip-head", "truncate", "splice-head", "splice-chunk", "magic", "dup", "zero"))
        n = len(buf)
        if n == 0:
            break
        if op in ("flip", "flip-head"):
            span, flips = (min(n, 64), 3) if op == "flip-head" else (n, 8)
            for _ in range(rng.randint(1, flips)):
                buf[rng.randrange(span)] ^= 1 << rng.randrange(8)
        elif op == "truncate":
            del buf[rng.randrange(n):]
        elif op == "splice-head":  # another format's header on this body
            k = rng.randint(1, min(64, n))
            buf[:k] = rng.choice(others)[:k]
        elif op == "splice-chunk":
            other = rng.choice(others)
            a = rng.randrange(len(other))
            at = rng.randrange(n)
            buf[at:at] = other[a:a + rng.randint(1, 256)]
        elif op == "magic":  # size / offset / count fields set to extremes
            for _ in range(rng.randint(1, 4)):
                width = rng.choice((2, 4))
                value = rng.choice(_MAGIC) & ((1 << (8 * width)) - 1)
                at = rng.randrange(max(1, n - width))
                buf[at:at + width] = value.to_bytes(width, rng.choice(("little", "big")))
        elif op == "dup":
            a = rng.randrange(n)
            piece = buf[a:a + rng.randint(1, 512)]
            buf[a:a] = piece * rng.randint(1, 4)
        else:
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 256))
            buf[a:b] = bytes(b - a)
        done.append(op)
    return bytes(buf), "+".join(done) or "none"


def write_fuzzed_files(folder: Path, start: int, count: int, seed: int,
                       bases: list[tuple[str, str, bytes]] | None = None) -> list[str]:
    """Fuzzed files number `start` .. `start + count - 1` into `folder`; file i depends only on (seed, i)."""
    bases = bases or base_files()
    others = [b for _, _, b in bases]
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(start, start + count):
        rng = random.Random(f"{seed}:{i}")
        name, ext, data = rng.choice(bases)
        data, label = _mutate(rng, data, others)
        if rng.random() < 0.15:
            ext = rng.choice(_EXTENSIONS)  # an extension that lies
        raw = f"{i:06d}_{name}_{label}{ext}".encode()
        if i % _NON_UTF8_EVERY == 0:
            raw = b"\xff\xfe" + raw  # Latin-1 / Shift-JIS era names are not UTF-8
        path = os.path.join(os.fsencode(folder), raw)
        with open(path, "wb") as f:
            f.write(data)
        made.append(os.fsdecode(path))
    return made


def write_special_files(folder: Path, max_bytes: int) -> list[str]:
    """Non-regular files named like images, an empty one and a sparse one above `max_bytes`."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.png")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(folder / "socket.png"))  # the socket file stays after close
    os.symlink("/dev/zero", folder / "dev_zero.png")
    os.symlink(folder / "no_such_target.png", folder / "dangling.png")
    (folder / "empty.png").write_bytes(b"")
    with open(folder / "sparse_huge.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(max_bytes + 1)
    return [str(folder / n) for n in ("fifo.png", "socket.png", "dev_zero.png", "dangling.png", "empty.png",
                                       "sparse_huge.png")]


def make_fuzzed_folder(folder: Path, count: int, seed: int, max_bytes: int = _DEFAULT_MAX_BYTES) -> list[str]:
    """`count` fuzzed files and the special files, all in `folder` (one ingest over it: the fast test)."""
    return write_fuzzed_files(folder, 0, count, seed) + write_special_files(folder, max_bytes)


@dataclass
class Tally:
    """What happened to the files of one or more folders."""

    tried: int = 0
    ok: int = 0
    error: int = 0
    duplicate: int = 0
    skipped: int = 0
    crashed: list[tuple[str, str]] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reasons: collections.Counter = field(default_factory=collections.Counter)

    def add(self, other: Tally) -> None:
        for name in ("tried", "ok", "error", "duplicate", "skipped", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.crashed += other.crashed
        self.hung += other.hung
        self.lost += other.lost
        self.reasons += other.reasons


def ingest_folder(folder: Path, out: Path, *, timeout: float, max_pixels: int, max_bytes: int,
                  workers: int) -> Tally:
    """Ingest `folder` in child processes until one finishes cleanly; count culprits as described above."""
    from animegen.data.ingest import scan_sources
    from animegen.data.manifest import MANIFEST_NAME, read_rows

    tally = Tally(tried=len(os.listdir(folder)))
    aside = out.with_name(out.name + "-culprits")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ignored: set[str] = set()
    while True:
        start = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(out), str(max_pixels),
                                   str(max_bytes), str(workers)], check=False, capture_output=True,
                                  text=True, timeout=timeout, env=env, errors="replace")
            failure = None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]
            if proc.returncode < 0:
                failure = f"killed by signal {-proc.returncode}"
        except subprocess.TimeoutExpired:
            proc, failure = None, "hung"
        tally.seconds += time.monotonic() - start
        if failure is None:
            ignored = {p for p, _ in json.loads(proc.stdout.strip().splitlines()[-1])["ignored"]}
            break
        rows = read_rows(out / MANIFEST_NAME)
        pending = [p for p in scan_sources([folder]) if str(p) not in rows]
        if not pending:  # failed after every file had its row
            tally.crashed.append((f"{folder} (after the last file)", failure))
            break
        culprit = pending[0]
        if failure == "hung":
            tally.hung.append(str(culprit))
        else:
            tally.crashed.append((str(culprit), failure))
        aside.mkdir(parents=True, exist_ok=True)
        os.rename(culprit, aside / f"{len(os.listdir(aside)):06d}-{culprit.name}")
    rows = read_rows(out / MANIFEST_NAME)
    for row in rows.values():
        kind = {"ok": "ok", "near_duplicate": "ok", "error": "error", "duplicate": "duplicate"}[row.status]
        setattr(tally, kind, getattr(tally, kind) + 1)
        if row.status == "error":
            tally.reasons[(row.reason or "").split(" (")[0].split(":")[0]] += 1
    tally.skipped = len(ignored)
    remaining = {os.fsdecode(os.path.join(os.fsencode(folder), n)) for n in os.listdir(os.fsencode(folder))}
    tally.lost = sorted(remaining - set(rows) - ignored)
    return tally


def main(argv: list[str] | None = None) -> int:
    from animegen.data.image_io import DEFAULT_MAX_PIXELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000, help="fuzzed files (special files come on top)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first); not in the repo")
    ap.add_argument("--chunk", type=int, default=1000, help="files per ingest child")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a child counts as hung")
    ap.add_argument("--workers", type=int, default=1, help="ingest decoding threads per child")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    ap.add_argument("--max-bytes", type=int, default=_DEFAULT_MAX_BYTES)
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args(argv)

    if args.work.exists():
        shutil.rmtree(args.work)
    made_at = time.monotonic()
    bases = base_files()
    folders = []
    for k, start in enumerate(range(0, args.count, args.chunk)):
        folder = args.work / "files" / f"chunk-{k:04d}"
        write_fuzzed_files(folder, start, min(args.chunk, args.count - start), args.seed, bases)
        folders.append(folder)
    for path in write_special_files(args.work / "special-all", args.max_bytes):  # one folder per special file
        folder = args.work / "files" / f"special-{Path(path).stem}"
        folder.mkdir(parents=True)
        os.rename(path, folder / Path(path).name)
        folders.append(folder)
    shutil.rmtree(args.work / "special-all")
    made_s = time.monotonic() - made_at

    total = Tally()
    for folder in folders:
        total.add(ingest_folder(folder, args.work / "ds" / folder.name, timeout=args.timeout,
                                max_pixels=args.max_pixels, max_bytes=args.max_bytes, workers=args.workers))
    figures = {
        "seed": args.seed, "tried": total.tried, "ok": total.ok, "error": total.error,
        "duplicate": total.duplicate, "skipped": total.skipped, "crashed": len(total.crashed),
        "hung": len(total.hung), "lost": len(total.lost), "seconds": round(total.seconds, 1),
        "make_seconds": round(made_s, 1), "crash_examples": total.crashed[:10], "hung_examples": total.hung[:10],
        "lost_examples": total.lost[:10], "top_error_reasons": total.reasons.most_common(12),
        "crash_kinds": collections.Counter(why.split(":")[0] for _, why in total.crashed).most_common(),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"tried {total.tried} | rows ok {total.ok} | error rows {total.error} | duplicate rows "
              f"{total.duplicate} | skipped {total.skipped} | crashed {len(total.crashed)} | hung "
              f"{len(total.hung)} | lost {len(total.lost)} | {total.seconds:.1f} s ingest "
              f"(+{made_s:.1f} s to make the files; seed {args.seed})")
        for what in ("crash_kinds", "crash_examples", "hung_examples", "lost_examples", "top_error_reasons"):
            if figures[what]:
                print(f"{what}:", *figures[what], sep="\n  ")
    return 1 if total.crashed or total.hung or total.lost else 0


if __name__ == "__main__":
    sys.exit(main())
