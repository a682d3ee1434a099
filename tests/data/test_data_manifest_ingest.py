"""Manifest crash-safety and `ingest`: sidecars, duplicates, hostile folders, untouched sources, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from datakit import noise_image, smooth_image, write_hostile_folder
from PIL import Image

from animegen.data.ingest import find_near_duplicate_clusters, ingest, read_sidecar
from animegen.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestRow,
    export_parquet,
    load_manifest,
    read_rows,
)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_last_version_wins_and_torn_line_is_repaired(tmp_path):
    with Manifest(tmp_path, create=True) as m:
        m.put(ManifestRow(path="/a", sha256="1"))
        m.put(ManifestRow(path="/b", sha256="2"))
        m.put(ManifestRow(path="/a", sha256="1", tags=["smile"]))
    path = tmp_path / MANIFEST_NAME
    assert len(path.read_text().splitlines()) == 2  # compacted on close
    with open(path, "a") as f:
        f.write('{"path": "/c", "sha2')  # a process killed mid-line
    with Manifest(tmp_path) as m:
        assert set(m.rows) == {"/a", "/b"} and m.rows["/a"].tags == ["smile"]
        m.put(ManifestRow(path="/c", sha256="3"))
    rows = read_rows(path)
    assert set(rows) == {"/a", "/b", "/c"}
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_manifest_is_locked_against_a_second_writer(tmp_path):
    with Manifest(tmp_path, create=True), pytest.raises(RuntimeError, match="in use"):
        Manifest(tmp_path)


def test_missing_manifest_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="animegen data ingest"):
        Manifest(tmp_path / "nope")


def test_unknown_columns_survive_and_parquet_export(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"path": "/x", "width": 3, "custom": 1}) + "\n")
    rows = load_manifest(tmp_path)
    assert rows[0].extra == {"custom": 1} and rows[0].to_dict()["custom"] == 1
    rows[0].tag_scores = {"smile": 0.5}
    rows[0].tags = ["smile"]
    import pyarrow.parquet as pq

    table = pq.read_table(export_parquet(rows, tmp_path / "m.parquet"))
    assert table.num_rows == 1 and table.column("tags").to_pylist() == [["smile"]]
    assert json.loads(table.column("tag_scores")[0].as_py()) == {"smile": 0.5}


def test_sidecars(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    (tmp_path / "a.txt").write_text(" 1girl, smile \n")
    (tmp_path / "a.json").write_text(json.dumps({"tags": ["long hair", "smile"], "caption": "ignored"}))
    assert read_sidecar(img) == ("1girl, smile", ["long hair", "smile"])
    b = tmp_path / "b.jpg"
    (tmp_path / "b.caption").write_text("a girl")
    assert read_sidecar(b) == ("a girl", None)
    c = tmp_path / "c.jpg"
    (tmp_path / "c.json").write_text(json.dumps({"text": "a cat", "tag_string": "cat no_humans"}))
    assert read_sidecar(c) == ("a cat", ["cat", "no humans"])


def test_near_duplicate_banding_matches_brute_force():
    import random

    rnd = random.Random(0)
    base = [rnd.getrandbits(64) for _ in range(30)]
    hashes = []
    for i, b in enumerate(base):  # each base plus variants 1..6 bits away
        hashes.append((f"k{i}", f"{b:016x}"))
        v = b
        for j in range(rnd.randint(0, 3)):
            v ^= 1 << rnd.randrange(64)
            hashes.append((f"k{i}_{j}", f"{v:016x}"))
    for t in (0, 2, 4):
        got = sorted(sorted(c) for c in find_near_duplicate_clusters(hashes, t))
        # brute force single-link reference
        parent = {k: k for k, _ in hashes}

        def root(k, parent=parent):
            while parent[k] != k:
                k = parent[k]
            return k

        for a, ha in hashes:
            for b, hb in hashes:
                if a < b and (int(ha, 16) ^ int(hb, 16)).bit_count() <= t:
                    parent[root(a)] = root(b)
        groups = {}
        for k, _ in hashes:
            groups.setdefault(root(k), []).append(k)
        want = sorted(sorted(g) for g in groups.values() if len(g) > 1)
        assert got == want


def test_ingest_hostile_folder_dupes_and_untouched_sources(tmp_path):
    src = tmp_path / "src"
    expected = write_hostile_folder(src / "hostile")
    noise_image(10).save(src / "a.png")
    (src / "a.txt").write_text("1girl, smile")
    (src / "sub").mkdir()
    (src / "sub" / "a_copy.png").write_bytes((src / "a.png").read_bytes())  # exact duplicate
    big = smooth_image(3, (96, 96))
    big.save(src / "near_big.png")
    big.resize((48, 48), Image.BICUBIC).save(src / "near_small.jpg", quality=90)  # near duplicate, smaller
    before = _snapshot(src)

    out = tmp_path / "ds"
    rep = ingest([src], out, progress=False)
    assert _snapshot(src) == before  # bytes and mtimes unchanged
    rows = {Path(r.path).name: r for r in load_manifest(out)}
    for name, keyword in expected.items():
        if keyword is None:
            assert rows[name].status == "ok", (name, rows[name].reason)
        else:
            assert rows[name].status == "error" and keyword.lower() in rows[name].reason.lower()
    assert {Path(p).name for p, _ in rep.errors} == {n for n, k in expected.items() if k}
    assert "despite the .jpg extension" in rows["really_png.jpg"].reason
    assert rows["a.png"].source_caption == "1girl, smile" and rows["a.png"].width == 48
    assert rows["a_copy.png"].status == "duplicate" and rows["a_copy.png"].duplicate_of == str(src / "a.png")
    assert rows["near_small.jpg"].status == "near_duplicate"
    assert rows["near_small.jpg"].duplicate_of == str(src / "near_big.png")
    assert rows["near_big.png"].status == "ok" and rows["near_big.png"].cluster is not None
    assert [Path(p).name for p in rep.clusters[0]] == ["near_big.png", "near_small.jpg"]
    assert json.loads((out / "near_duplicates.json").read_text())[0]["kept"] == str(src / "near_big.png")

    again = ingest([src], out, progress=False)  # nothing new: everything skipped
    assert again.added == 0 and again.skipped == len(rows)
    assert _snapshot(src) == before


_SLOW_INGEST = textwrap.dedent("""
    import sys, time
    import animegen.data.ingest as ing
    real = ing._examine
    def slow(*a, **k):
        time.sleep(0.05)  # stand-in for slow storage, so the test can kill mid-way
        return real(*a, **k)
    ing._examine = slow
    ing.ingest([sys.argv[1]], sys.argv[2], progress=False)
""")


def test_kill_and_resume_loses_and_repeats_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    n = 60
    for i in range(n):
        noise_image(100 + i, (24, 24)).save(src / f"img{i:03d}.png")
    out = tmp_path / "ds"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_INGEST, str(src), str(out)], env=env)
    manifest = out / MANIFEST_NAME
    deadline = time.time() + 60
    while time.time() < deadline:
        if manifest.exists() and manifest.read_text().count("\n") >= 5:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = len(read_rows(manifest))
    assert 5 <= done_before < n  # it really was interrupted mid-way

    rep = ingest([src], out, progress=False)
    assert rep.skipped == done_before and rep.added == n - done_before
    lines = manifest.read_text().splitlines()
    paths = [json.loads(line)["path"] for line in lines]
    assert len(paths) == n and len(set(paths)) == n
    assert {Path(p).name for p in paths} == {f"img{i:03d}.png" for i in range(n)}



