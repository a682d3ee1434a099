"""One bad file never aborts or hangs an ingest (issue #12 item 10): every file is a row or a reported skip.

Hostile inputs: a file name that is not valid UTF-8, decoders raising anything at all (corrupt TIFFs raise
TypeError), FIFOs / sockets / devices named `*.png`, files above the byte limit, and a fuzzed folder.
Anything that could hang runs in a child process with a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from datakit import noise_image
from PIL import Image, PngImagePlugin

import animegen.data.ingest as ingest_module
from animegen.core.files import sha256_file
from animegen.data.image_io import ImageError, read_image
from animegen.data.ingest import ingest
from animegen.data.manifest import MANIFEST_NAME, load_manifest

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 20  # the child needs ~1 s; a hang is what makes it take longer

_INGEST_CHILD = """
import json, sys
from animegen.data.ingest import ingest
rep = ingest([sys.argv[1]], sys.argv[2], progress=False, workers=2, near_duplicate_threshold=-1)
print(json.dumps({"ignored": rep.ignored, "errors": rep.errors}))
"""


def _ingest_in_child(src: Path, out: Path) -> dict:
    """Run ingest in a child process; fail (not hang) if it does not return within CHILD_TIMEOUT_S."""
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", _INGEST_CHILD, str(src), str(out)], check=False,
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ingest hung: no result after {CHILD_TIMEOUT_S} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - start < CHILD_TIMEOUT_S
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _make_socket(path: Path) -> None:
    """A Unix socket file at `path` (it stays after the socket is closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(str(path))
        except OSError:
            pytest.skip("cannot create a Unix socket here")


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    noise_image(seed, (16, 16)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------- non-UTF-8 names


def test_non_utf8_file_name_is_a_row_the_manifest_round_trips_and_reruns_pass(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raw_name = b"\xff\xfe.png"  # Latin-1 / Shift-JIS era downloads: not decodable as UTF-8
    try:
        with open(os.fsencode(src) + b"/" + raw_name, "wb") as f:
            f.write(_png_bytes(1))
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    (src / "plain.png").write_bytes(_png_bytes(2))
    out = tmp_path / "ds"

    rep = ingest([src], out, progress=False)
    assert rep.added == 2 and not rep.errors
    text = (out / MANIFEST_NAME).read_bytes().decode("utf-8")  # still valid UTF-8 JSON lines
    rows = {os.fsencode(Path(r.path).name): r for r in load_manifest(out)}
    assert len(text.splitlines()) == 2 and set(rows) == {raw_name, b"plain.png"}
    odd = rows[raw_name]
    assert odd.status == "ok" and odd.width == 16
    assert Path(odd.path).read_bytes() == _png_bytes(1)  # the stored path still opens the very file

    again = ingest([src], out, progress=False)  # every rerun gets past it
    assert again.added == 0 and again.skipped == 2


def test_non_utf8_file_name_survives_the_parquet_export(tmp_path):
    """Parquet strings must be UTF-8: the odd byte is shown escaped (`--parquet` must not crash the ingest)."""
    import pyarrow.parquet as pq

    from animegen.data.manifest import export_parquet

    src = tmp_path / "src"
    src.mkdir()
    try:
        with open(os.fsencode(src) + b"/caf\xe9.png", "wb") as f:  # Latin-1 "café"
            f.write(_png_bytes(10))
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    ingest([src], tmp_path / "ds", progress=False)
    table = pq.read_table(export_parquet(load_manifest(tmp_path / "ds"), tmp_path / "m.parquet"))
    [shown] = table.column("path").to_pylist()
    assert shown.endswith("caf\\udce9.png") and table.column("status").to_pylist() == ["ok"]


# ------------------------------------------------------------------------------------ decoder exceptions


def _tiff_second_page_without_width() -> bytes:
    """A 2-page TIFF whose second IFD lost its ImageWidth tag: Pillow raises TypeError('Missing dimensions')."""
    buf = io.BytesIO()
    page = Image.new("RGB", (8, 8), (9, 9, 9))
    page.save(buf, format="TIFF", save_all=True, append_images=[page])
    data = bytearray(buf.getvalue())
    assert data[:4] == b"II*\x00"
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for i in range(struct.unpack_from("<H", data, second)[0]):
        entry = second + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 256:  # ImageWidth
            struct.pack_into("<H", data, entry, 0xFFFE)
    return bytes(data)


def test_corrupt_tiff_raising_type_error_is_an_error_row(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.tif").write_bytes(_tiff_second_page_without_width())
    (src / "good.png").write_bytes(_png_bytes(3))
    with pytest.raises(ImageError, match="corrupt"):
        read_image(src / "broken.tif")
    rep = ingest([src], tmp_path / "ds", progress=False)
    rows = {Path(r.path).name: r for r in load_manifest(tmp_path / "ds")}
    assert rows["good.png"].status == "ok"
    assert rows["broken.tif"].status == "error" and "corrupt" in rows["broken.tif"].reason
    assert [Path(p).name for p, _ in rep.errors] == ["broken.tif"]


@pytest.mark.parametrize("exc", [
    TypeError("Missing dimensions"), struct.error("unpack requires a buffer of 4 bytes"),
    IndexError("list index out of range"), ZeroDivisionError("division by zero"), SyntaxError("not a PNG"),
    ValueError("bad value"), RuntimeError("decoder error"), RecursionError("too deep"), KeyError(257),
    AttributeError("no attribute"), OSError("broken data stream"), EOFError(),
    Image.DecompressionBombError("crafted size"), MemoryError(),
], ids=lambda e: type(e).__name__)
def test_any_decoder_exception_is_an_error_row_with_a_reason(tmp_path, monkeypatch, exc):
    def explode(self, *args, **kwargs):
        raise exc

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", explode, raising=False)  # PNGs only
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png_bytes(4))
    noise_image(5, (16, 16)).save(src / "b.jpg")
    rep = ingest([src], tmp_path / "ds", progress=False, workers=1)
    rows = {Path(r.path).name: r for r in load_manifest(tmp_path / "ds")}
    assert rows["b.jpg"].status == "ok"
    assert rows["a.png"].status == "error" and rows["a.png"].reason
    assert len(rep.errors) == 1


def test_an_unexpected_error_after_decoding_is_an_error_row(tmp_path, monkeypatch):
    """The last line of defence: a bug in any per-file step costs that file, not the run."""
    def broken_hash(image, hash_size=8):
        raise RuntimeError("hash failed")

    monkeypatch.setattr(ingest_module, "perceptual_hash", broken_hash)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png_bytes(6))
    ingest([src], tmp_path / "ds", progress=False, workers=1)
    [row] = load_manifest(tmp_path / "ds")
    assert row.status == "error" and "RuntimeError: hash failed" in row.reason


# -------------------------------------------------------------------------------- special files, size


def _returns_within(fn, fifo: Path, seconds: float = 5.0):
    """fn()'s outcome (value or exception); if it blocks, unblock it by writing the FIFO's other end, then fail."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            outcome["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader now sees EOF
        t.join(seconds)
        pytest.fail(f"{fn} blocked on a FIFO for {seconds} s")
    return outcome


def test_hash_and_decode_refuse_a_fifo_without_blocking(tmp_path):
    from animegen.core.files import NotRegularFileError

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for fn in (lambda: sha256_file(fifo, cached=False), lambda: sha256_file(fifo), lambda: read_image(fifo)):
        outcome = _returns_within(fn, fifo)
        err = outcome.get("error")
        assert isinstance(err, NotRegularFileError | ImageError), outcome
        assert "not a regular file (FIFO)" in str(err)


def test_special_files_named_png_are_reported_skips_and_never_hang(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.png").write_bytes(_png_bytes(7))
    os.mkfifo(src / "fifo.png")
    os.symlink(src / "fifo.png", src / "link_to_fifo.png")
    os.symlink("/dev/zero", src / "zero.png")  # endless: hashing it never ends
    _make_socket(src / "sock.png")
    result = _ingest_in_child(src, tmp_path / "ds")
    ignored = {Path(p).name: reason for p, reason in result["ignored"]}
    assert set(ignored) == {"fifo.png", "link_to_fifo.png", "zero.png", "sock.png"}
    assert "not a regular file (FIFO)" in ignored["fifo.png"]
    assert "not a regular file (FIFO)" in ignored["link_to_fifo.png"]  # the symlink is followed
    assert "not a regular file (character device)" in ignored["zero.png"]
    assert "not a regular file (socket)" in ignored["sock.png"]
    rows = {Path(r.path).name: r for r in load_manifest(tmp_path / "ds")}
    assert set(rows) == {"good.png"} and rows["good.png"].status == "ok"


def test_a_file_above_max_bytes_is_an_error_row(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    small = _png_bytes(8)
    (src / "small.png").write_bytes(small)
    noise_image(9, (64, 64)).save(src / "big.png")
    limit = len(small) + 10
    assert (src / "big.png").stat().st_size > limit
    rep = ingest([src], tmp_path / "ds", progress=False, max_bytes=limit)
    rows = {Path(r.path).name: r for r in load_manifest(tmp_path / "ds")}
    assert rows["small.png"].status == "ok"
    assert rows["big.png"].status == "error"
    assert "too large" in rows["big.png"].reason and "--max-bytes" in rows["big.png"].reason
    assert [Path(p).name for p, _ in rep.errors] == ["big.png"]
    with pytest.raises(ImageError, match="too large"):
        read_image(src / "big.png", max_bytes=limit)


def test_cli_max_bytes_and_the_skipped_files_table(tmp_path, monkeypatch):
    import typer.main
    from rich.console import Console
    from typer.testing import CliRunner

    from animegen.cli import data as data_cli
    from animegen.cli.data import app
    from animegen.data.image_io import DEFAULT_MAX_BYTES

    monkeypatch.setattr(data_cli, "console", Console(width=500))  # long tmp paths on one line

    src = tmp_path / "src"
    src.mkdir()
    (src / "small.png").write_bytes(_png_bytes(11))
    noise_image(12, (64, 64)).save(src / "big.png")
    _make_socket(src / "sock.png")
    r = CliRunner().invoke(app, ["ingest", str(src), "--out", str(tmp_path / "ds"), "--max-bytes",
                                 str(len(_png_bytes(11)) + 10)])
    assert r.exit_code == 0, r.output
    assert "not regular files" in r.output and "sock.png" in r.output and "not a regular file (socket)" in r.output
    assert "big.png" in r.output and "--max-bytes" in r.output
    [option] = [p for p in typer.main.get_command(app).commands["ingest"].params if p.name == "max_bytes"]
    assert option.default == DEFAULT_MAX_BYTES  # the CLI and the library agree


# ------------------------------------------------------------------------------------------------- fuzz


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_ingest", REPO / "scripts" / "fuzz_ingest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_few_hundred_fuzzed_files_are_each_a_row_or_a_reported_skip(tmp_path):
    fuzz = _fuzz_module()
    src = tmp_path / "fuzz"
    made = fuzz.make_fuzzed_folder(src, count=300, seed=12)
    on_disk = {str(src / os.fsdecode(name)) for name in os.listdir(os.fsencode(src))}
    assert len(made) == len(on_disk) >= 300
    assert any(os.fsencode(p).decode("utf-8", "replace") != p for p in made)  # non-UTF-8 names included
    result = _ingest_in_child(src, tmp_path / "ds")
    rows = {r.path: r for r in load_manifest(tmp_path / "ds")}
    ignored = {p for p, _ in result["ignored"]}
    assert not set(rows) & ignored
    assert set(rows) | ignored == on_disk  # every file is a row or a reported skip
    assert all(r.reason for r in rows.values() if r.status == "error")
    statuses = {r.status for r in rows.values()}
    assert {"ok", "error"} <= statuses  # the fuzz hits both sides
