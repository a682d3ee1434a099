"""The generation library as a Python user meets it: `help()` documents it, a typo'd keyword says what was meant,
a lent pipeline works end to end without a model path, and `GeneratedImage.save` keeps the infotext.

Everything runs on the tiny random-weight SD1.5 (the images are noise; the plumbing is real).
"""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from animegen.core.errors import AnimegenError
from animegen.generate import GeneratedImage, GenerationRequest, Generator, request_from_infotext
from animegen.generate.infotext import parse_infotext, read_png_infotext
from animegen.models.lora import LoraFile, LoraModule, lora_hash, write_lora
from animegen.models.tiny import build_tiny_pipeline

SMALL = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler", "seed": 5}
FIELDS = [f.name for f in dataclasses.fields(GenerationRequest)]


def documented_attributes(cls) -> list[str]:
    """The names listed under `Attributes:` in a class docstring (Google style: `name: text`)."""
    doc = inspect.getdoc(cls)
    assert doc and "Attributes:" in doc, f"{cls.__name__} has no Attributes section"
    section = doc.split("Attributes:", 1)[1]
    return re.findall(r"^    (\w+): \S", section, re.MULTILINE)


def help_text(obj) -> str:
    return pydoc.render_doc(obj, renderer=pydoc.plaintext)


# ---- help() ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [GenerationRequest, GeneratedImage])
def test_every_field_is_documented_and_nothing_else(cls):
    assert documented_attributes(cls) == [f.name for f in dataclasses.fields(cls)]
    text = help_text(cls)
    assert all(f"{name}: " in text for name in documented_attributes(cls))


def test_the_signatures_stay_the_real_ones():
    """Keyword checking must not hide the parameters from `help()` / `inspect.signature` / IDEs."""
    assert list(inspect.signature(GenerationRequest).parameters) == FIELDS
    assert inspect.signature(GenerationRequest).parameters["steps"].default is None
    params = inspect.signature(Generator).parameters
    assert list(params)[:2] == ["model", "vae"] and "pipe" in params and "embeddings_dir" in params
    assert "progress" in inspect.signature(Generator.__call__).parameters


def test_help_generator_documents_every_constructor_argument_and_method():
    text = help_text(Generator)
    missing = [name for name in inspect.signature(Generator).parameters if f"`{name}`" not in text]
    assert not missing, f"Generator's docstring does not describe: {missing}"
    public = [name for name, member in vars(Generator).items()
              if (not name.startswith("_") or name == "__call__") and callable(member)]
    undocumented = [name for name in public if not inspect.getdoc(getattr(Generator, name))]
    assert not undocumented, f"Generator methods without a docstring: {undocumented}"


# ---- typo'd keywords ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("typo, meant", [
    ("promt", "prompt"), ("cfg", "cfg_scale"), ("seeds", "seed"), ("negative", "negative_prompt"),
    ("guidance_scale", "cfg_scale"), ("num_inference_steps", "steps"), ("sampler_name", "sampler"),
])
def test_a_typo_in_a_request_names_the_keyword_the_nearest_field_and_all_fields(typo, meant):
    with pytest.raises(TypeError) as info:
        GenerationRequest(prompt="1girl", **{typo: 7})
    message = str(info.value)
    assert f"'{typo}'" in message and f"did you mean '{meant}'?" in message
    assert all(name in message for name in FIELDS)
    assert isinstance(info.value, AnimegenError)  # a user error: the CLI prints it without a traceback
    assert "\n" not in message


def test_several_typos_are_named_in_one_error():
    with pytest.raises(TypeError, match="'promt'.*'prompt'.*'stpes'.*'steps'"):
        GenerationRequest(promt="1girl", stpes=3)


def test_a_word_like_no_field_still_lists_the_fields():
    with pytest.raises(TypeError, match="'zzz'") as info:
        GenerationRequest("1girl", zzz=1)
    assert "did you mean" not in str(info.value) and "cfg_scale" in str(info.value)


def test_a_typo_when_rebuilding_a_request_is_caught_too():
    text = "1girl\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64"
    with pytest.raises(TypeError, match="did you mean 'seed'"):
        request_from_infotext(text, sed=3)
    with pytest.raises(TypeError, match="did you mean 'steps'"):
        dataclasses.replace(GenerationRequest("1girl"), step=3)
    assert request_from_infotext(text, seed=3).seed == 3


def test_a_typo_in_generator_is_reported_before_any_loading(tmp_path):
    missing = tmp_path / "no-such-model"  # loading it would fail differently
    with pytest.raises(TypeError, match="'devcie'.*did you mean 'device'") as info:
        Generator(missing, devcie="cpu")
    assert "embeddings_dir" in str(info.value) and "model_name" in str(info.value)
    with pytest.raises(TypeError, match="did you mean 'model_name'"):
        Generator(pipe=object(), model_nmae="tiny")



def test_a_typo_in_generate_images_names_loader_and_request_keywords(tmp_path):
    from animegen.generate import generate_images

    with pytest.raises(TypeError, match="'devcie'.*did you mean 'device'") as info:
        generate_images("1girl", model=tmp_path / "no-such-model", devcie="cpu")
    assert "lora_dir" in str(info.value) and "cfg_scale" in str(info.value)

@pytest.fixture(scope="module")
def lent():
    """A Generator lent a tiny pipeline built in memory: no model path, no folder name, no file to hash."""
    pipe = build_tiny_pipeline("sd15")
    pipe.set_progress_bar_config(disable=True)
    return Generator(pipe=pipe)


def test_a_typo_when_calling_a_generator_names_its_keywords(lent):
    with pytest.raises(TypeError, match="'progres'.*did you mean 'progress'"):
        lent(GenerationRequest("1girl", **SMALL), progres=print)
    with pytest.raises(TypeError, match="'steps'.*GenerationRequest"):
        lent(GenerationRequest("1girl", **SMALL), steps=3)


# ---- a lent pipe, end to end -------------------------------------------------------------------------------


def test_a_lent_pipe_without_a_name_generates_and_writes_no_unknown_fields(lent):
    assert lent.model is None and lent.model_name is None and lent.model_hash is None
    [image] = lent(GenerationRequest("1girl", **SMALL))
    assert image.image.size == (64, 64) and np.isfinite(image.array).all()
    params = parse_infotext(image.infotext)
    assert "Model hash" not in params and "Model" not in params and "None" not in image.infotext
    again = lent(request_from_infotext(image.infotext))[0]  # its infotext re-runs it
    assert np.array_equal(again.array, image.array)


def test_a_lent_pipe_records_model_name_when_given():
    pipe = build_tiny_pipeline("sd15")
    [image] = Generator(pipe=pipe, model_name="my-run-step-100")(GenerationRequest("1girl", **SMALL))
    assert parse_infotext(image.infotext)["Model"] == "my-run-step-100"


def test_a_lent_pipe_takes_loras_and_gives_the_base_model_back(tmp_path):
    pipe = build_tiny_pipeline("sd15")
    g = torch.Generator().manual_seed(0)
    target = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    module = LoraModule(target, "lora", {"lora_down.weight": torch.randn(4, 32, generator=g),
                                         "lora_up.weight": torch.randn(32, 4, generator=g)}, alpha=4.0)
    path = write_lora(LoraFile({target: module}, {}), tmp_path / "spiky.safetensors", format="kohya")
    generator = Generator(pipe=pipe, lora_dir=tmp_path)
    base = generator(GenerationRequest("1girl", **SMALL))[0]
    styled = generator(GenerationRequest("1girl <lora:spiky:1>", **SMALL))[0]
    assert np.abs(styled.array - base.array).max() > 1e-3
    assert parse_infotext(styled.infotext)["Lora hashes"] == f"spiky: {lora_hash(path)}"
    assert np.array_equal(generator(GenerationRequest("1girl", **SMALL))[0].array, base.array)


def test_a_lent_pipe_uses_textual_inversion_embeddings(tmp_path):
    pipe = build_tiny_pipeline("sd15")
    folder = tmp_path / "embeddings"
    folder.mkdir()
    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(3)) * 5
    save_file({"emb_params": vectors}, str(folder / "easynegative.safetensors"))
    plain = Generator(pipe=pipe)(GenerationRequest("1girl", negative_prompt="easynegative", **SMALL))[0]
    used = Generator(pipe=pipe, embeddings_dir=folder)(
        GenerationRequest("1girl", negative_prompt="easynegative", **SMALL))[0]
    assert parse_infotext(used.infotext)["TI hashes"].startswith("easynegative: ")
    assert "TI hashes" not in parse_infotext(plain.infotext)
    assert np.abs(used.array - plain.array).max() > 1e-4


# ---- GeneratedImage.save -----------------------------------------------------------------------------------


def test_save_writes_the_png_with_its_infotext(lent, tmp_path):
    [image] = lent(GenerationRequest("1girl, (smile:1.2)", negative_prompt="lowres", **SMALL))
    written = image.save(tmp_path / "out.png")
    assert written == tmp_path / "out.png"
    text = read_png_infotext(written)
    assert text == image.infotext
    assert parse_infotext(text) == parse_infotext(image.infotext)
    assert parse_infotext(text)["Seed"] == "5" and parse_infotext(text)["Negative prompt"] == "lowres"
    assert request_from_infotext(text) == request_from_infotext(image.infotext)
    with open(written, "rb") as f:
        from PIL import Image

        assert np.array_equal(np.asarray(Image.open(f).convert("RGB")), np.asarray(image.image))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # written atomically: no temp file left
