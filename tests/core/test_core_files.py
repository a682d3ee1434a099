"""The file helpers: atomic writes honour the umask and never collide, one cache root, one hash cache."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from animegen.core import files
from animegen.core.files import atomic_dir, atomic_path, atomic_write, cache_root, sha256_file


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_open_would(tmp_path, umask):
    before = os.umask(umask)
    try:
        written = atomic_write(tmp_path / "a" / "b.txt", "hello")
        with open(tmp_path / "plain.txt", "w") as f:  # what any ordinary writer gets
            f.write("x")
    finally:
        os.umask(before)
    assert written.read_text() == "hello"
    assert mode(written) == 0o666 & ~umask == mode(tmp_path / "plain.txt")


def test_atomic_dir_modes_follow_the_umask(tmp_path, umask_022):
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    assert mode(tmp_path / "ckpt") == 0o755 and mode(tmp_path / "ckpt" / "w.bin") == 0o644


def test_a_failed_write_leaves_the_target_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_failed_folder_write_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "step"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("v1")
    with pytest.raises(OSError, match="step"), atomic_dir(target) as tmp:
        (tmp / "a").write_text("v2")
        raise OSError(28, "No space left on device")
    assert (target / "a").read_text() == "v1" and [p.name for p in tmp_path.iterdir()] == ["step"]
    with atomic_dir(target) as tmp:  # and a successful rewrite replaces it
        (tmp / "a").write_text("v3")
    assert (target / "a").read_text() == "v3" and [p.name for p in tmp_path.iterdir()] == ["step"]


def test_os_errors_name_the_target_not_the_temp_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as err:
        atomic_write(blocker / "sub" / "out.txt", "y")  # a folder under a regular file
    assert str(blocker) in str(err.value.filename)


def test_concurrent_writers_of_one_target_never_collide(tmp_path):
    target = tmp_path / "report.json"
    errors, payloads = [], [json.dumps({"writer": i, "pad": "x" * 20000}) for i in range(8)]

    def write(text):
        try:
            for _ in range(20):
                atomic_write(target, text)
        except BaseException as exc:  # noqa: BLE001 (collected and asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in payloads  # one writer's complete text, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("ANIMEGEN_CACHE")
    assert cache_root() == tmp_path / "xdg" / "animegen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "animegen"


def test_every_cache_lives_under_the_one_root(monkeypatch, tmp_path):
    """The FID statistics cache and the compile cache used to ignore ANIMEGEN_CACHE (or XDG_CACHE_HOME)."""
    from animegen.evaluate.features import default_cache_dir
    from animegen.generate import speed

    for var, root in (("ANIMEGEN_CACHE", tmp_path / "a"), ("XDG_CACHE_HOME", tmp_path / "x")):
        monkeypatch.delenv("ANIMEGEN_CACHE", raising=False)
        monkeypatch.setenv(var, str(root))
        assert default_cache_dir().is_relative_to(cache_root())
        assert speed.default_compile_cache_dir().is_relative_to(cache_root())


def test_sha256_file_is_cached_by_path_size_and_mtime(tmp_path, private_cache):
    import hashlib

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"abc" * 1000)
    assert sha256_file(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    cache = json.loads((private_cache / "hashes.json").read_text())
    assert list(cache) == [f"{f.resolve()}|3000|{f.stat().st_mtime_ns}"]
    key = next(iter(cache))
    (private_cache / "hashes.json").write_text(json.dumps({key: "cached"}))
    assert sha256_file(f) != "cached"  # this process remembers what it hashed, without reading the cache file
    files._HASHES_SEEN.clear()  # as in a new process: the cache file answers, the file is not read again
    assert sha256_file(f) == "cached"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1))
    assert sha256_file(f) == hashlib.sha256(b"abc" * 1000).hexdigest()  # a touched file is hashed anew


def test_no_torch_at_import_of_core():
    import subprocess
    import sys

    code = "import sys, animegen.core.files, animegen.core.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent)
    assert out.stdout.strip() == "False"
