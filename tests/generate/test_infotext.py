"""Infotext: A1111's format, written and read back, including quoting and multi-line prompts."""

from PIL import Image

from animegen.generate.engine import GeneratedImage
from animegen.generate.infotext import format_infotext, parse_infotext, read_png_infotext, save_png

# A1111 1.9 infotext as its PNG Info shows it (hand-written from A1111's format).
A1111_TEXT = (
    "masterpiece, 1girl, (silver hair:1.2)\n"
    "looking at viewer <lora:cutechar:0.8>\n"
    "Negative prompt: lowres, bad anatomy\n"
    "worst quality\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 832x1216, "
    'Model hash: 1a2b3c4d5e, Model: animagine-xl-3.1, Clip skip: 2, Lora hashes: "cutechar: 0123456789ab", '
    "Version: v1.9.4"
)


def test_parse_a1111_infotext():
    p = parse_infotext(A1111_TEXT)
    assert p["Prompt"] == "masterpiece, 1girl, (silver hair:1.2)\nlooking at viewer <lora:cutechar:0.8>"
    assert p["Negative prompt"] == "lowres, bad anatomy\nworst quality"
    assert p["Steps"] == "28" and p["Sampler"] == "DPM++ 2M" and p["Schedule type"] == "Karras"
    assert p["CFG scale"] == "6.5" and p["Seed"] == "1234567"
    assert (p["Size-1"], p["Size-2"]) == (832, 1216)
    assert p["Lora hashes"] == "cutechar: 0123456789ab"
    assert p["Clip skip"] == "2" and p["Version"] == "v1.9.4"


def test_format_quotes_like_a1111_and_round_trips():
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": "7", "Seed": 5, "Size": "512x512",
              "Model": "my, model: v2", "Lora hashes": "a: 1, b: 2", "Clip skip": None}
    text = format_infotext("1girl, smile", "", params)
    assert 'Model: "my, model: v2"' in text
    assert "Clip skip" not in text  # None means unset, left out as A1111 does
    assert "Negative prompt" not in text
    p = parse_infotext(text)
    assert p["Model"] == "my, model: v2" and p["Lora hashes"] == "a: 1, b: 2"
    assert p["Prompt"] == "1girl, smile" and p["Negative prompt"] == ""


def test_png_round_trip_latin1_and_unicode(tmp_path):
    for prompt in ("1girl, red eyes", "1girl, 桜, ♥"):
        text = format_infotext(prompt, "bad", {"Steps": 1, "Sampler": "Euler", "Seed": 1, "Size": "8x8"})
        path = save_png(GeneratedImage(Image.new("RGB", (8, 8)), 1, text), tmp_path / "x.png")
        assert read_png_infotext(path) == text
        assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_png_without_infotext_reads_none(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert read_png_infotext(tmp_path / "plain.png") is None
