"""Every writer of user-visible files gives them the mode `open()` would (0o666 & ~umask) and is atomic.

`tempfile.mkstemp` creates 0600 files, so exported LoRAs, tiny single files and checkpoints were unreadable
to anyone else (a web server, a colleague, a container with another uid); fixed `.tmp` names made two
writers of one report collide.
"""

from __future__ import annotations

import os
import stat
import threading
from types import SimpleNamespace

import torch
from PIL import Image

EXPECTED = 0o666 & ~0o022


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_lora_export(tmp_path, umask_022):
    from animegen.models.lora.formats import lora_from_state_dict, write_lora

    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    lf = lora_from_state_dict({f"{name}.lora_down.weight": torch.ones(2, 8),
                               f"{name}.lora_up.weight": torch.ones(8, 2), f"{name}.alpha": torch.tensor(2.0)}, {})
    for fmt in ("kohya", "diffusers"):
        path = write_lora(lf, tmp_path / f"{fmt}.safetensors", format=fmt)
        assert mode(path) == EXPECTED, fmt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diffusers.safetensors", "kohya.safetensors"]


def test_tiny_single_file_and_folder(tmp_path, umask_022):
    from animegen.models.tiny import save_tiny_model

    written = save_tiny_model("sd15", tmp_path / "folder", tmp_path / "tiny.safetensors")
    assert mode(written["single_file"]) == EXPECTED
    assert all(mode(p) == EXPECTED for p in (tmp_path / "folder").rglob("*") if p.is_file())


def test_png(tmp_path, umask_022):
    from animegen.generate.infotext import read_png_infotext, save_png

    path = save_png(SimpleNamespace(image=Image.new("RGB", (8, 8)), infotext="1girl\nSteps: 1"), tmp_path / "a.png")
    assert mode(path) == EXPECTED and read_png_infotext(path) == "1girl\nSteps: 1"


def test_training_checkpoint_folder(tmp_path, umask_022):
    from animegen.train.checkpoint import load_checkpoint, save_checkpoint

    final = save_checkpoint(tmp_path, 3, {"w": torch.ones(2)}, {"state": {}}, {"last_epoch": 3}, {"x": 1},
                            keep_last=2)
    assert mode(final) == 0o777 & ~0o022
    assert {p.name: mode(p) for p in final.iterdir()} == {n: EXPECTED for n in
                                                          ("weights.safetensors", "training_state.pt", "state.json")}
    assert load_checkpoint(final)["step"] == 3


def test_latent_cache_file(tmp_path, umask_022):
    from animegen.train.cache import LatentCache

    cache = LatentCache(tmp_path, vae_id="vae")
    item = SimpleNamespace(source="img.png", content_hash=lambda: "0" * 64, bucket=(8, 8))
    cache.get(item, False, lambda item, flip: (torch.zeros(4, 1, 1), (0, 0)))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p.suffix for p in files] == [".safetensors"] and mode(files[0]) == EXPECTED


def test_two_writers_of_one_report_do_not_collide(tmp_path):
    from animegen.evaluate.report import write_run_report

    out, errors = tmp_path / "report.html", []

    def write(i):
        try:
            for _ in range(10):
                write_run_report(tmp_path, data={"run": {"model": f"model-{i}"}}, out=out)
        except BaseException as exc:  # noqa: BLE001 (asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.endswith("</html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
