"""A1111 "infotext": the generation parameters stored in a PNG's `parameters` text chunk.

The format is A1111's, so its PNG Info tab and Civitai read our images and we read theirs:

    <prompt, possibly several lines>
    Negative prompt: <negative, possibly several lines>
    Steps: 28, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768, Model hash: 1a2b3c4d5e, ...

Values that contain `,`, `:` or a newline are JSON-quoted, exactly as A1111's `quote()` does. The noise
source ("RNG") and ENSD are written and read by `noise_fields` / `parse_noise_fields`, with A1111's meaning
of a missing field (GPU noise, ENSD 0).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from animegen.core.files import atomic_path

# A1111's own pattern for one `Key: value` pair on the parameters line.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


def quote(value: Any) -> str:
    """Quote a value the way A1111 does: only when it would break the `Key: value, ...` line."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """Inverse of `quote`: JSON-decode a quoted value, leave anything else as it is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def format_infotext(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    """Build infotext; `params` is ordered (A1111 order: Steps, Sampler, CFG scale, Seed, Size, ...).

    Entries whose value is None are left out, as A1111 leaves out unset fields.
    """
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    parts = [prompt]
    if negative_prompt:
        parts.append(f"Negative prompt: {negative_prompt}")
    parts.append(line)
    return "\n".join(parts)


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse infotext into a dict: `Prompt`, `Negative prompt`, every parameter, and `Size-1`/`Size-2`.

    Mirrors A1111's `parse_generation_parameters`: the last line holds the parameters when it has at
    least three `Key: value` pairs; lines before `Negative prompt:` are the prompt.
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM_RE.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, value in _PARAM_RE.findall(last):
        value = unquote(value.strip())
        size = _SIZE_RE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = int(size.group(1)), int(size.group(2))
        result[key] = value
    return result


def noise_fields(rng: str, eta_noise_seed_delta: int, *, sampler_uses_ensd: bool) -> dict[str, Any]:
    """The noise fields for `format_infotext`: "ENSD" as A1111 writes it (non-zero, and the sampler draws
    ancestral noise, A1111's `uses_ensd`: elsewhere it changes nothing), and "RNG".

    Unlike A1111 we also write "RNG: GPU", its default, which A1111 reads with the same meaning: animegen
    infotexts from before this field carry no "RNG" yet were drawn from CPU generators, and the explicit
    field is what tells the two apart (`parse_noise_fields`).
    """
    return {"ENSD": eta_noise_seed_delta if eta_noise_seed_delta and sampler_uses_ensd else None, "RNG": rng}


def parse_noise_fields(params: dict[str, Any]) -> tuple[str, int]:
    """(rng, eta_noise_seed_delta) of a parsed infotext, with A1111's meaning of what is absent.

    No "RNG" means GPU, A1111's default, except in an animegen infotext ("Version: animegen ..."), which
    lacks it only if written before animegen recorded it, when its noise came from CPU generators. ENSD is
    read from "ENSD" or from the setting's long name "Eta noise seed delta"; absent means 0.
    """
    from animegen.generate.rng import A1111_DEFAULT_SOURCE, ensd_value, rng_source

    if "RNG" in params:
        rng = rng_source(params["RNG"], "infotext RNG:")
    else:
        rng = "CPU" if str(params.get("Version", "")).startswith("animegen") else A1111_DEFAULT_SOURCE
    key = "ENSD" if "ENSD" in params else "Eta noise seed delta"
    return rng, ensd_value(params.get(key, 0), f"infotext {key}:")


def png_with_infotext(image: Image.Image, infotext: str) -> PngImagePlugin.PngInfo:
    """The PNG metadata block A1111 writes: a `parameters` tEXt (iTXt when not Latin-1) chunk."""
    info = PngImagePlugin.PngInfo()
    try:
        infotext.encode("latin-1")
        info.add_text("parameters", infotext)
    except UnicodeEncodeError:
        info.add_itxt("parameters", infotext)
    return info


def save_png(generated, path: str | os.PathLike) -> Path:
    """Write a `GeneratedImage` (or any object with `.image` and `.infotext`) as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        generated.image.save(tmp, format="PNG", pnginfo=png_with_infotext(generated.image, generated.infotext))
    return path


def read_png_infotext(path: str | os.PathLike) -> str | None:
    """The `parameters` text of a PNG written by A1111, animegen or anything compatible; None if absent."""
    with Image.open(path) as img:
        img.load()
        text = img.info.get("parameters")
        if text is None and hasattr(img, "text"):
            text = img.text.get("parameters")
    return text
