"""Tag statistics / bulk edits, kohya and WebDataset export, and the `animegen data` CLI end to end."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from datakit import noise_image, write_hostile_folder, write_tiny_scorer, write_tiny_tagger
from PIL import Image
from typer.testing import CliRunner

from animegen.data.export import export_kohya, export_webdataset
from animegen.data.ingest import ingest
from animegen.data.manifest import Manifest, load_manifest
from animegen.data.stats import dataset_stats, edit_tags, tag_frequencies


def _dataset(tmp_path, n=5):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        noise_image(300 + i, (30 + i, 24)).save(src / f"{i}.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(src / "cmyk.jpg", quality=95)
    noise_image(9, (20, 20)).save(src / "photo.jpg", quality=90)
    ds = tmp_path / "ds"
    ingest([src], ds, progress=False)
    with Manifest(ds) as m:
        for i, r in enumerate(sorted(m, key=lambda r: r.path)):
            r.tags = ["1girl", "long hair"] if i % 2 else ["1girl", "long_hair_typo", "smile"]
            r.caption = f"caption {i}"
            m.put(r)
    return src, ds


def test_frequencies_and_bulk_edit(tmp_path):
    _, ds = _dataset(tmp_path)
    counts = tag_frequencies(load_manifest(ds))
    assert counts["1girl"] == 7 and counts["long hair"] == 3 and counts["long_hair_typo"] == 4
    changed = edit_tags(ds, replace={"long_hair_typo": "long hair"}, remove=["smile"])
    assert changed == 4
    rows = load_manifest(ds)
    assert all(r.tags == ["1girl", "long hair"] for r in rows)
    assert sum(r.caption is None for r in rows) == 4  # edited rows need a new caption
    counts, status, chart = dataset_stats(ds)
    assert counts == {"1girl": 7, "long hair": 7} and status == {"ok": 7}
    assert chart.read_bytes()[:4] == b"\x89PNG"
    assert (ds / "tag_counts.csv").read_text().splitlines()[0] == "tag,count"


def test_export_kohya_copies_clean_files_and_normalises_the_rest(tmp_path):
    src, ds = _dataset(tmp_path)
    out = tmp_path / "kohya"
    rep = export_kohya(ds, out, progress=False)
    assert rep.written == 7 and not rep.failed
    folder = out / "1_data"
    images = sorted(p for p in folder.iterdir() if p.suffix != ".txt")
    assert len(images) == 7 and all(p.with_suffix(".txt").exists() for p in images)
    by_src = {r.path: r for r in load_manifest(ds)}
    for r in by_src.values():
        name = next(p for p in images if p.stem.endswith(r.sha256[:10]))
        if r.format == "JPEG" and r.mode == "RGB":
            assert name.read_bytes() == (src / "photo.jpg").read_bytes()  # copied byte for byte
        if r.mode == "CMYK":
            assert name.suffix == ".png" and Image.open(name).mode == "RGB"
        assert name.with_suffix(".txt").read_text() == r.caption
    again = export_kohya(ds, out, progress=False)
    assert again.written == 0 and again.skipped == 7


def test_export_webdataset_bounded_shards_readable(tmp_path):
    _, ds = _dataset(tmp_path)
    with Manifest(ds) as m:
        first = min(m, key=lambda r: r.path)
        first.repeats = 2
        m.put(first)
    out = tmp_path / "wds"
    rep = export_webdataset(ds, out, shard_size_mb=0.004, progress=False)  # ~4 KB: several shards
    assert rep.written == 8 and len(rep.shards) > 1
    samples = {}
    for shard in rep.shards:
        with tarfile.open(out / shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    assert len(samples) == 8
    for key, parts in samples.items():
        assert set(parts) in ({"jpg", "txt", "json"}, {"png", "txt", "json"})
        meta = json.loads(parts["json"])
        img = Image.open(io.BytesIO(parts.get("png") or parts["jpg"]))
        assert img.size == (meta["width"], meta["height"])
        assert parts["txt"].decode().startswith("caption ")
    assert sum(k.startswith(first.sha256[:16]) for k in samples) == 2
    assert json.loads((out / "index.json").read_text())["samples"] == 8

    import webdataset as wds

    loaded = list(wds.WebDataset([str(out / s) for s in rep.shards], shardshuffle=False).decode("pil"))
    assert len(loaded) == 8 and all(isinstance(s["txt"], str) for s in loaded)


def test_cli_end_to_end_and_user_errors(tmp_path):
    from animegen.cli.main import app

    runner = CliRunner()
    src = tmp_path / "src"
    write_hostile_folder(src)
    for i in range(4):
        noise_image(400 + i, (26 + i, 26)).save(src / f"ok{i}.png")
    tagger = tmp_path / "tagger"
    write_tiny_tagger(tagger)
    ds = tmp_path / "ds"

    r = runner.invoke(app, ["data", "ingest", str(src), "--out", str(ds), "--parquet"])
    assert r.exit_code == 0, r.output
    assert "truncated" in r.output and "empty file" in r.output and (ds / "manifest.parquet").exists()
    r = runner.invoke(app, ["data", "tag", str(ds), "--tagger", str(tagger), "--general-mcut",
                            "--blacklist", "solo,cat"])
    assert r.exit_code == 0, r.output
    rows = [x for x in load_manifest(ds) if x.ok]
    assert rows and all(x.tags is not None and "solo" not in x.tags for x in rows)
    clip_dir, pred = write_tiny_scorer(tmp_path / "scorer")
    cfg = tmp_path / "score.toml"
    cfg.write_text('[score]\naesthetic_cutoffs = { "nice" = -1000.0, "ugly" = -2000.0 }\n')
    r = runner.invoke(app, ["data", "score", str(ds), "--aesthetic", str(pred), "--clip", str(clip_dir),
                            "--device", "cpu", "--config", str(cfg), "--min-score", "-1000"])
    assert r.exit_code == 0, r.output
    rows = [x for x in load_manifest(ds) if x.ok]
    assert all(x.aesthetic_score is not None and x.aesthetic_tag == "nice" and x.quality_tag for x in rows)
    r = runner.invoke(app, ["data", "caption", str(ds), "--preset", "danbooru"])
    assert r.exit_code == 0, r.output
    assert all(x.caption is not None for x in load_manifest(ds) if x.ok)
    r = runner.invoke(app, ["data", "balance", str(ds)])
    assert r.exit_code == 0 and "median bucket size" in r.output, r.output
    r = runner.invoke(app, ["data", "stats", str(ds), "--replace", "smile=grin", "--top", "5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "export", str(ds), "--format", "wds", "--out", str(tmp_path / "w")])
    assert r.exit_code == 0 and "shards" in r.output, r.output
    weights = [x.weight for x in load_manifest(ds) if x.ok]  # balance's weights reach the shards, rounded
    assert abs(json.loads((tmp_path / "w" / "index.json").read_text())["samples"] - sum(weights)) < 1

    # user errors: one line, exit code 2, no traceback
    for args, msg in [
        (["data", "tag", str(tmp_path / "nowhere"), "--tagger", str(tagger)], "animegen data ingest"),
        (["data", "tag", str(ds), "--tagger", str(tmp_path / "no_tagger")], "tagger"),
        (["data", "caption", str(ds), "--preset", "nope"], "dashanime"),
        (["data", "stats", str(ds), "--replace", "broken"], "OLD=NEW"),
        (["data", "score", str(ds), "--aesthetic", str(tmp_path / "none.pth")], "not found"),
    ]:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and "Traceback" not in r.output, r.output
    assert np.isfinite([x.weight for x in load_manifest(ds) if x.ok]).all()
