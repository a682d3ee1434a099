"""report.html / compare.html read as a person reads them (issue #14): values, not Python reprs; each warning
once with its count; thumbnails big enough to judge; a toy tagger labelled as such; everything escaped."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from animegen.evaluate.report import write_compare_report, write_run_report

REPRS = ("[[", "{'", "resolved {", "PosixPath(", "None", "(None", "[]")
BIASED = "FID computed from 4 real and 4 generated images: strongly biased upward"


class Page(HTMLParser):
    """Cells (their text), warnings (their text), and every <img> with the <a href> around it."""

    def __init__(self, text: str):
        super().__init__()
        self.cells: list[str] = []
        self.cell_titles: list[list[str]] = []
        self.warnings: list[str] = []
        self.images: list[dict] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._warn: list[str] | None = None
        self._depth = 0
        self._href: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("td", "th"):
            self._cell, self._depth = [], 0
            self.cell_titles.append([])
        elif self._cell is not None:
            self._depth += 1
            if "title" in a:
                self.cell_titles[-1].append(a["title"])
        if tag == "div" and "warn" in (a.get("class") or "").split():
            self._warn = []
        if tag == "a":
            self._href = a.get("href")
        if tag == "img":
            self.images.append({**a, "href": self._href})

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None
        if tag == "div" and self._warn is not None:
            self.warnings.append("".join(self._warn).strip())
            self._warn = None
        if tag == "a":
            self._href = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._warn is not None:
            self._warn.append(data)


def _png(path: Path, size: tuple[int, int], color=(200, 40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_run(folder: Path, *, prompt: str = "1girl, smile", toy_tagger: bool = False, warnings=(),
             model: str = "tiny-sd15", lora: str | None = "/loras/zxq.safetensors", clip: float = 20.0) -> Path:
    """A run folder as `run_eval` writes it (metrics.json shape and values), with two images of two sizes."""
    _png(folder / "images" / "p000_00_s0.png", (64, 64))
    _png(folder / "images" / "p000_01_s1.png", (768, 512))
    images = [{"file": "images/p000_00_s0.png", "prompt_index": 0, "seed": 0},
              {"file": "images/p000_01_s1.png", "prompt_index": 0, "seed": 1}]
    tag_block = {"overall": {"support": 4, "hits": 3, "detected": 4, "recall": 0.75, "precision": 0.75},
                 "per_category": {"general": {"tags": 2, "support": 4, "hits": 3, "detected": 4, "recall": 0.75,
                                              "precision": 0.75}},
                 "per_tag": {"smile": {"category": "general", "support": 2, "hits": 1, "detected": 2,
                                       "recall": 0.5, "precision": 0.5}},
                 "per_prompt": {prompt: {"recall": 0.75, "images": 2, "missing": {"smile": 1}}},
                 "ignored_tags": [], "tagger": "tagger", "toy_tagger": toy_tagger}
    data = {
        "format_version": 1,
        "run": {"model": model, "model_hash": "707990dacd", "loras": [[lora, 1.0]] if lora else [],
                "prompts_file": None, "n_prompts": 1, "n_per_prompt": 2, "seed": 0, "sampler": "Euler",
                "steps": 8, "cfg_scale": None, "width": 64, "height": 64, "preset": "none",
                "negative_prompt": "", "real_dir": Path("/data/real"), "created": "2026-12-02T13:24:48+00:00",
                "animegen": "0.1.0", "resolved": {"Sampler": "Euler", "Steps": 8, "CFG scale": "7",
                                                  "Size": "64x64"}},
        "metrics": {"fid": {"value": 25.1634, "mode": "legacy", "weights": "random-seed0", "comparable": False,
                            "n_real": 4, "n_fake": 4, "ci": {"low": 18.7, "high": 32.7, "confidence": 0.95}},
                    "kid": {"mean": 0.0511, "std": 0.0053, "subset_size": 4, "n_subsets": 10},
                    "clip_score": {"mean": clip, "std": 1.5, "n": 2, "model": "tiny-clip",
                                   "per_image": [clip - 1, clip + 1]},
                    "tag_adherence": tag_block},
        "skipped": {},
        "warnings": list(warnings),
        "per_prompt": [{"prompt": prompt, "images": images, "clip_score": clip, "tag_recall": 0.75,
                        "missing_tags": {"smile": 1}}],
        "images": images,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(data, default=str))
    write_run_report(folder, data)
    return folder / "report.html"


def _no_reprs(page: Page) -> None:
    for cell in page.cells:
        for bad in REPRS:
            assert bad not in cell, f"cell shows a Python repr: {cell!r}"


def test_run_report_cells_show_values_not_reprs(tmp_path):
    page = Page(make_run(tmp_path / "run").read_text())
    _no_reprs(page)
    i = page.cells.index("LoRAs")
    assert page.cells[i + 1] == "zxq (1.0)"
    assert page.cell_titles[i + 1] == ["/loras/zxq.safetensors"]  # the path is one hover away
    generated = page.cells[page.cells.index("as generated (infotext)") + 1]
    assert "Sampler" in generated and "Euler" in generated and "64x64" in generated
    assert page.cells[page.cells.index("CFG scale") + 1] == "default"  # not set: the model's default was used
    assert page.cells[page.cells.index("negative prompt") + 1] == "—"
    assert page.cells[page.cells.index("real images") + 1] == "/data/real"
    assert page.cells[page.cells.index("created") + 1] == "2026-12-02 13:24:48 UTC"
    assert "Not computed" not in "".join(page.text)


def test_run_report_without_loras_says_none(tmp_path):
    page = Page(make_run(tmp_path / "run", lora=None).read_text())
    _no_reprs(page)
    assert page.cells[page.cells.index("LoRAs") + 1] == "—"


def test_a_repeated_warning_appears_once_with_its_count(tmp_path):
    notes = [BIASED] * 5 + ["KID from 4 images per subset: unbiased but noisy"]
    page = Page(make_run(tmp_path / "run", warnings=notes).read_text())
    biased = [w for w in page.warnings if "strongly biased" in w]
    assert len(biased) == 1 and "×5" in biased[0]
    [kid] = [w for w in page.warnings if "KID from" in w]
    assert "×" not in kid  # a single warning carries no count


def test_thumbnails_are_at_least_256px_and_open_the_full_image(tmp_path):
    report = make_run(tmp_path / "run")
    thumbs = [img for img in Page(report.read_text()).images if img.get("alt", "").startswith("images/")]
    assert len(thumbs) == 2
    for img in thumbs:
        assert max(int(img["width"]), int(img["height"])) >= 256
        full = report.parent / img["href"]
        assert full.is_file()  # a click opens the full-size PNG next to the report
        with Image.open(full) as im:  # the displayed box keeps the image's aspect ratio
            assert int(img["width"]) * im.height == pytest.approx(int(img["height"]) * im.width, rel=0.01)
    big = next(img for img in thumbs if img["alt"].endswith("_s1.png"))
    embedded = Image.open(io.BytesIO(base64.b64decode(big["src"].split(",", 1)[1])))
    assert max(embedded.size) == 256  # the embedded copy is a thumbnail, not the 768 px original


def test_toy_tagger_is_labelled_only_when_it_was_used(tmp_path):
    toy = Page(make_run(tmp_path / "toy", toy_tagger=True).read_text())
    real = Page(make_run(tmp_path / "real", toy_tagger=False).read_text())
    assert any("TOY TAGGER" in c for c in toy.cells)
    assert "TOY TAGGER" not in "".join(real.text)


def test_everything_is_escaped(tmp_path):
    evil = "<script>alert(1)</script>, 1girl & 'quotes'"
    report = make_run(tmp_path / "a", prompt=evil, model="<b>model</b>", lora="/l/<i>zxq.safetensors",
                      warnings=["<img src=x onerror=alert(2)> warned"])
    make_run(tmp_path / "b", prompt=evil, lora=None)
    for path in (report, write_compare_report([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp")):
        text = path.read_text()
        assert "<script" not in text.lower() and "<b>model" not in text and "<i>zxq" not in text
        assert "<img src=x" not in text
        page = Page(text)
        shown = "".join(page.text)
        assert "<script>alert(1)</script>" in shown and "1girl & 'quotes'" in shown
        assert "<img src=x onerror=alert(2)> warned" in shown
        assert not [img for img in page.images if not img["src"].startswith("data:")]


def test_compare_shows_values_and_merges_the_warnings_runs_share(tmp_path):
    shared = "FID/KID computed with RANDOM Inception weights (test mode)"
    make_run(tmp_path / "base", lora=None, warnings=[shared], clip=10.0)
    make_run(tmp_path / "lora", warnings=[shared, BIASED], clip=12.5)
    out = write_compare_report([tmp_path / "base", tmp_path / "lora"], tmp_path / "cmp")
    page = Page(out.read_text())
    _no_reprs(page)
    assert "lora — zxq (1.0)" in page.cells and "base" in page.cells
    assert "12.50 ± 1.50" in page.cells
    i = page.cells.index("LoRAs")  # the runs' settings side by side, a LoRA's path one hover away
    assert page.cells[i + 1:i + 3] == ["—", "zxq (1.0)"] and page.cell_titles[i + 2] == ["/loras/zxq.safetensors"]
    [random] = [w for w in page.warnings if "RANDOM" in w]
    assert "×2" in random and "every run" in random
    [biased] = [w for w in page.warnings if "strongly biased" in w]
    assert "×" not in biased and "lora" in biased
    thumbs = [img for img in page.images if img.get("alt") in ("base", "lora — zxq (1.0)")]
    assert len(thumbs) == 2
    for img in thumbs:
        assert max(int(img["width"]), int(img["height"])) >= 256
        assert (out.parent / img["href"]).is_file()
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["base", "lora — zxq (1.0)"]


def test_the_tiny_tagger_is_known_as_a_toy(tmp_path):
    import onnx

    from animegen.data.tagger import WD14Tagger
    from animegen.data.tiny_tagger import is_toy_tagger, write_tiny_tagger

    write_tiny_tagger(tmp_path / "toy")
    assert is_toy_tagger(WD14Tagger.from_pretrained(tmp_path / "toy"))
    # the same graph without the mark, as a real WD14 download has none
    model = onnx.load(tmp_path / "toy" / "model.onnx")
    del model.metadata_props[:]
    (tmp_path / "real").mkdir()
    onnx.save(model, tmp_path / "real" / "model.onnx")
    (tmp_path / "real" / "selected_tags.csv").write_text((tmp_path / "toy" / "selected_tags.csv").read_text())
    assert not is_toy_tagger(WD14Tagger.from_pretrained(tmp_path / "real"))
    assert not is_toy_tagger(object())  # anything with a .tag() but no ONNX session


def test_run_eval_with_the_tiny_tagger_labels_it(tiny_sd15_dir, tmp_path, one_torch_thread):
    from animegen.data.tagger import WD14Tagger
    from animegen.data.tiny_tagger import write_tiny_tagger
    from animegen.evaluate.run import run_eval

    write_tiny_tagger(tmp_path / "tagger")
    data = run_eval(tiny_sd15_dir, ["1girl, smile"], tmp_path / "run", n_per_prompt=1, steps=1, width=64,
                    height=64, tagger=WD14Tagger.from_pretrained(tmp_path / "tagger"), progress=False)
    assert data["metrics"]["tag_adherence"]["toy_tagger"] is True
    assert any("TOY tagger" in w for w in data["warnings"])
    page = Page((tmp_path / "run" / "report.html").read_text())
    assert any("TOY TAGGER" in c for c in page.cells)
    _no_reprs(page)
    assert re.search(r"\d", page.cells[page.cells.index("as generated (infotext)") + 1])
