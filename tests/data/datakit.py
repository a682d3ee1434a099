"""Builders for the data tests: hostile image files, a tiny ONNX WD14 tagger, a tiny aesthetic scorer."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

TAGGER_SIZE = 32
# (name, category) in selected_tags.csv order: ratings first, like the real files.
TAGGER_TAGS = [
    ("general", 9), ("sensitive", 9), ("questionable", 9), ("explicit", 9),
    ("1girl", 0), ("solo", 0), ("long_hair", 0), ("smile", 0), ("^_^", 0), ("blue_eyes", 0),
    ("1boy", 0), ("no_humans", 0), ("cat", 0), ("flower", 0), ("open_mouth", 0), ("short_hair", 0),
    ("hatsune_miku", 4), ("kirisame_marisa", 4), ("hakurei_reimu", 4),
]


def noise_image(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def smooth_image(seed: int, size=(64, 64)) -> Image.Image:
    """A low-frequency picture: resizing/recompressing it keeps its perceptual hash (near duplicates)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.BICUBIC)


def png_bomb_bytes(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG header claiming a gigantic size, with almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_hostile_folder(folder: Path) -> dict[str, str | None]:
    """Files of every awkward kind; returns name -> expected error keyword (None = must load)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    # broken ones
    good = folder / "_tmp.jpg"
    noise_image(1, (64, 64)).save(good, quality=90)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expected["truncated.jpg"] = "truncated"
    (folder / "empty.png").write_bytes(b"")
    expected["empty.png"] = "empty"
    (folder / "bomb.png").write_bytes(png_bomb_bytes())
    expected["bomb.png"] = "too large"
    (folder / "notes.png").write_text("this is not an image\n")
    expected["notes.png"] = "not an image"
    (folder / "error_page.jpg").write_text("<!DOCTYPE html><html><body>404</body></html>")
    expected["error_page.jpg"] = "HTML"
    # awkward but usable ones
    noise_image(2).save(folder / "really_png.jpg", format="PNG")
    expected["really_png.jpg"] = None
    pal = Image.new("P", (20, 10))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (10, 0, 20, 10))
    pal.save(folder / "palette.png", transparency=0)  # left half transparent -> white
    expected["palette.png"] = None
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)  # red in CMYK
    expected["cmyk.jpg"] = None
    arr16 = np.full((8, 8), 65535, dtype=np.uint16)
    arr16[:, :4] = 32896  # 128 * 257
    Image.fromarray(arr16).save(folder / "gray16.png")
    expected["gray16.png"] = None
    frames = [Image.new("RGB", (12, 12), c) for c in [(0, 255, 0), (255, 0, 0), (0, 0, 255)]]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    expected["animated.gif"] = None
    la = Image.new("LA", (10, 10), (0, 0))  # fully transparent black -> white
    la.save(folder / "gray_alpha.png")
    expected["gray_alpha.png"] = None
    return expected


def write_tiny_tagger(folder: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """model.onnx (NHWC -> flatten -> linear -> sigmoid) + selected_tags.csv; returns (W, b)."""
    from animegen.data.tiny_tagger import write_tiny_tagger as write

    return write(folder, TAGGER_TAGS, size=TAGGER_SIZE, seed=seed)


def write_tiny_scorer(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny random CLIP vision model folder + an improved-aesthetic-predictor MLP (.safetensors)."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from animegen.data.aesthetic import AestheticMLP

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16)
    clip_dir = folder / "clip"
    CLIPVisionModelWithProjection(cfg).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip_dir)
    mlp = AestheticMLP(input_size=16)
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.5)
    pred = folder / "aesthetic.safetensors"
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, pred)
    return clip_dir, pred


CAPTION_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "girl", "cat", "with", "red", "hair", "[DEC]"]


def write_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A tiny random BLIP captioner folder (model + processor with a 12-word vocabulary)."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    try:
        from transformers import BlipImageProcessorPil as ImageProcessor  # no torchvision needed
    except ImportError:
        from transformers import BlipImageProcessor as ImageProcessor
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(CAPTION_VOCAB) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    proc = BlipProcessor(image_processor=ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    torch.manual_seed(seed)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4}
    cfg = BlipConfig(vision_config=dict(**small, image_size=32, patch_size=8),
                     text_config=dict(**small, vocab_size=len(CAPTION_VOCAB), max_position_embeddings=64,
                                      bos_token_id=11, pad_token_id=0, sep_token_id=3),
                     projection_dim=16)
    model_dir = folder / "blip"
    BlipForConditionalGeneration(cfg).save_pretrained(model_dir)
    proc.save_pretrained(model_dir)
    return model_dir
