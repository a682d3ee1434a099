"""The model-family core: each family's facts agree with its shipped configs, and `family_of` recognises
pipelines, single-file state dicts and LoRA files of the tiny SD1.5 / SDXL models."""

from __future__ import annotations

import pytest
import torch

from animegen.core.errors import AnimegenError
from animegen.models.family import FAMILIES, family_of, get_family


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models only (see the root conftest)."""


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_facts_agree_with_the_shipped_configs(name):
    family = FAMILIES[name]
    vae = family.config("vae")
    assert family.vae_scaling_factor == vae["scaling_factor"]
    assert family.vae_force_upcast == vae.get("force_upcast", False)
    shipped = {p.stem for p in family.config_dir.glob("text_encoder*.json")}
    assert set(family.components) == shipped
    for te in family.text_encoders:
        cfg = family.config(te.component)
        assert (te.kind == "open_clip") == (cfg["hidden_act"] == "gelu"), te  # OpenCLIP: gelu, CLIP-L: quick_gelu
        assert te.with_projection == (cfg["architectures"] == ["CLIPTextModelWithProjection"])
    # the pipeline class follows the UNet: only SDXL has text-time (size/crop) conditioning
    assert family.is_sdxl == (family.config("unet").get("addition_embed_type") == "text_time")
    # SDXL generates at its released resolution; SD1 and (deliberately, as before) SD2 at 512
    assert family.default_size == (vae["sample_size"] if family.is_sdxl else FAMILIES["sd1"].config("vae")["sample_size"])
    # SD2's modelspec name is the 768-v release whose (v-prediction) config is shipped
    if name == "sd2":
        assert family.config("scheduler")["prediction_type"] == "v_prediction"
        assert family.modelspec_architecture.endswith("-768-v")


def test_config_is_a_fresh_copy():
    family = get_family("sdxl")
    family.config("unet")["layers_per_block"] = 99
    assert family.config("unet")["layers_per_block"] == 2


def test_family_names_aliases_and_errors():
    assert get_family("sd15") is FAMILIES["sd1"]
    assert get_family("SDXL") is FAMILIES["sdxl"]
    assert get_family(FAMILIES["sd2"]) is FAMILIES["sd2"]
    with pytest.raises(AnimegenError) as info:
        get_family("sd3")
    assert all(n in str(info.value) for n in FAMILIES) and "sd15" in str(info.value)
    kohya = {te.kohya_prefix for f in FAMILIES.values() for te in f.text_encoders}
    assert kohya == {"lora_te_", "lora_te1_", "lora_te2_"}


def _load(folder):
    from animegen.models.loading import load_pipeline

    return load_pipeline(folder, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def tiny_pipes(tiny_sd15_dir, tiny_sdxl_dir):
    return {"sd1": _load(tiny_sd15_dir), "sdxl": _load(tiny_sdxl_dir)}


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_family_of_pipelines_and_their_single_files(tiny_pipes, name, tmp_path):
    from animegen.models.single_file import (
        load_single_file,
        pipeline_to_ldm,
        read_state_dict,
        save_single_file,
    )

    pipe = tiny_pipes[name]
    family = FAMILIES[name]
    assert family_of(pipe) is family
    assert family_of(pipeline_to_ldm(pipe)) is family
    path = save_single_file(pipe, tmp_path / "m.safetensors")
    state, header = read_state_dict(path)
    assert family_of(state) is family
    assert header["modelspec.architecture"] == family.modelspec_architecture
    loaded = load_single_file(path)
    assert family_of(loaded) is family and family_of(loaded.arch_info) is family
    for te, tokenizer in zip(family.text_encoders, [loaded.tokenizer, getattr(loaded, "tokenizer_2", None)]):
        assert tokenizer.pad_token == te.pad_token
    assert loaded.vae.config.scaling_factor == family.vae_scaling_factor


def _lora_of(pipe, family):
    from animegen.models.lora import LoraFile, LoraModule

    g = torch.Generator().manual_seed(0)
    targets = ["unet.mid_block.attentions.0.proj_in"]
    targets += [f"{te.component}.text_model.encoder.layers.0.mlp.fc1" for te in family.text_encoders]
    mods = {}
    for target in targets:
        component, _, path = target.partition(".")
        root = getattr(pipe, component)
        layer = root.get_submodule(path if hasattr(root, "text_model") else path.removeprefix("text_model."))
        out_f, in_f = layer.weight.shape[:2]
        mods[target] = LoraModule(target, "lora", {"lora_down.weight": torch.randn(2, in_f, generator=g),
                                                   "lora_up.weight": torch.randn(out_f, 2, generator=g)}, 1.0)
    return LoraFile(mods)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_family_of_lora_files(tiny_pipes, name, fmt, tmp_path):
    from animegen.models.lora import read_lora, write_lora

    family = FAMILIES[name]
    lora = _lora_of(tiny_pipes[name], family)
    assert family_of(lora) is family  # from the content alone
    back = read_lora(write_lora(lora, tmp_path / "l.safetensors", format=fmt))
    assert family_of(back) is family
    if fmt == "kohya":
        assert back.metadata["ss_base_model_version"] == family.kohya_base_model_version


def test_family_of_lora_header_wins_over_content(tiny_pipes):
    lora = _lora_of(tiny_pipes["sd1"], FAMILIES["sd1"])
    lora.metadata["ss_base_model_version"] = "sd_v2_v"
    assert family_of(lora) is FAMILIES["sd2"]
    lora.metadata = {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}
    assert family_of(lora) is FAMILIES["sdxl"]


def test_family_of_rejects_what_it_cannot_tell():
    with pytest.raises(AnimegenError, match="cannot tell"):
        family_of(3)
