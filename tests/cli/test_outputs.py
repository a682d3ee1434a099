"""generate/outputs.py: where generated images go (A1111's folder layout and numbering, or one flat folder)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from PIL import Image

from animegen.generate.infotext import read_png_infotext
from animegen.generate.outputs import OutputLayout, save_generated

DAY = date(2024, 5, 17)


@dataclass
class Fake:
    """What save_generated needs of a GeneratedImage."""
    image: Image.Image
    seed: int
    infotext: str


def _image(seed: int = 7) -> Fake:
    return Fake(Image.new("RGB", (8, 8), (seed % 256, 0, 0)), seed, f"1girl\nSteps: 2, Sampler: Euler a, Seed: {seed}")


def test_a1111_folders(tmp_path):
    layout = OutputLayout(tmp_path)
    assert layout.folder("txt2img", day=DAY) == tmp_path / "txt2img-images" / "2024-05-17"
    assert layout.folder("img2img", day=DAY) == tmp_path / "img2img-images" / "2024-05-17"
    assert layout.folder("txt2img", grid=True, day=DAY) == tmp_path / "txt2img-grids" / "2024-05-17"
    assert layout.folder("img2img", grid=True, day=DAY) == tmp_path / "img2img-grids" / "2024-05-17"
    assert layout.folder("txt2img").name == date.today().isoformat()


def test_flat_is_the_root(tmp_path):
    layout = OutputLayout(tmp_path, "flat")
    assert layout.folder("txt2img", day=DAY) == tmp_path
    assert layout.folder("img2img", grid=True, day=DAY) == tmp_path


def test_numbering_continues_after_the_highest(tmp_path):
    layout = OutputLayout(tmp_path)
    folder = layout.folder("txt2img", day=DAY)
    assert layout.next_path("txt2img", 42, day=DAY) == folder / "00000-42.png"
    folder.mkdir(parents=True)
    for name in ("00003-1.png", "00011-5.jpg", "notes.txt", "grid-0099.png", ".00050-1.png.abc.tmp"):
        (folder / name).write_bytes(b"")
    assert layout.next_path("txt2img", 42, day=DAY) == folder / "00012-42.png"
    # other kinds and other days number on their own, as A1111's per-folder count does
    assert layout.next_path("img2img", 42, day=DAY).name == "00000-42.png"
    assert layout.next_path("txt2img", 42, day=date(2024, 5, 18)).name == "00000-42.png"


def test_grids_are_named_as_a1111_names_them(tmp_path):
    layout = OutputLayout(tmp_path)
    first = layout.next_path("txt2img", 42, grid=True, day=DAY)
    assert first == tmp_path / "txt2img-grids" / "2024-05-17" / "grid-0000.png"
    first.parent.mkdir(parents=True)
    first.write_bytes(b"")
    assert layout.next_path("txt2img", 42, grid=True, day=DAY).name == "grid-0001.png"


def test_flat_numbering_counts_images_and_grids_apart(tmp_path):
    layout = OutputLayout(tmp_path, "flat")
    (tmp_path / "00004-3.png").write_bytes(b"")
    (tmp_path / "grid-0002.png").write_bytes(b"")
    assert layout.next_path("txt2img", 9).name == "00005-9.png"
    assert layout.next_path("txt2img", 9, grid=True).name == "grid-0003.png"


def test_bad_words_are_named(tmp_path):
    with pytest.raises(ValueError, match="layout 'a111'.*a1111, flat"):
        OutputLayout(tmp_path, "a111")
    with pytest.raises(ValueError, match="kind 'txt2im'.*txt2img, img2img"):
        OutputLayout(tmp_path).folder("txt2im")


def test_save_generated_writes_png_with_infotext(tmp_path):
    target = tmp_path / "deep" / "00000-7.png"
    assert save_generated(_image(), target) == target
    assert read_png_infotext(target) == _image().infotext
    assert [p.name for p in target.parent.iterdir()] == ["00000-7.png"]  # no temp file left behind


def test_save_numbers_and_never_overwrites(tmp_path):
    layout = OutputLayout(tmp_path)
    paths = [layout.save(_image(s), "txt2img", day=DAY) for s in (5, 6)]
    assert [p.name for p in paths] == ["00000-5.png", "00001-6.png"]
    grid = layout.save(_image(5), "txt2img", grid=True, day=DAY)
    assert grid == tmp_path / "txt2img-grids" / "2024-05-17" / "grid-0000.png"
    assert read_png_infotext(paths[1]) == _image(6).infotext


def test_concurrent_savers_get_distinct_numbers(tmp_path):
    layout = OutputLayout(tmp_path, "flat")
    saved: list[Path] = []
    lock = threading.Lock()

    def worker(seed):
        for _ in range(5):
            path = layout.save(_image(seed), "txt2img")
            with lock:
                saved.append(path)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name.split("-")[0] for p in saved}) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in saved)


def test_module_does_not_import_torch():
    code = "import sys, animegen.generate.outputs; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_concurrent_processes_get_distinct_numbers(tmp_path):
    code = ("import sys, time; from PIL import Image; from animegen.generate.outputs import OutputLayout\n"
            "class G: pass\n"
            "while time.time() < float(sys.argv[3]): time.sleep(0.005)\n"  # all start together
            "for i in range(25):\n"
            "    g = G(); g.image = Image.new('RGB', (8, 8)); g.infotext = 'x'; g.seed = int(sys.argv[2])\n"
            "    OutputLayout(sys.argv[1], 'flat').save(g, 'txt2img')\n")
    start = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(s), start]) for s in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 75 and len({n.split("-")[0] for n in names}) == 75
