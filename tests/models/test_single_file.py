"""A1111/Civitai single files: write, read back offline, and agree with diffusers' own converters."""

from __future__ import annotations

import socket

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from animegen.core.files import PickleRefusedError
from animegen.models.detect import CheckpointError
from animegen.models.single_file import load_single_file, load_vae_file, read_state_dict, save_single_file
from animegen.models.tiny import build_tiny_pipeline, save_tiny_model


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def sd15_file(tmp_path_factory):
    return save_tiny_model("sd15", single_file=tmp_path_factory.mktemp("sf") / "tiny15.safetensors")["single_file"]


@pytest.fixture(scope="module")
def sdxl_file(tmp_path_factory):
    return save_tiny_model("sdxl", single_file=tmp_path_factory.mktemp("sf") / "tinyxl.safetensors")["single_file"]


def _components(arch):
    return ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if arch == "sdxl" else [])


def _assert_same_weights(a, b, arch):
    for name in _components(arch):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert set(sa) == set(sb), f"{name}: {sorted(set(sa) ^ set(sb))[:5]}"
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"


def _image(pipe, folder_scheduler):
    pipe.scheduler = folder_scheduler  # the family's default sampler differs from the tiny folder's
    return pipe("1girl, solo", num_inference_steps=1, height=64, width=64, output_type="np",
                generator=torch.Generator("cpu").manual_seed(3)).images


def test_network_is_really_blocked():
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("huggingface.co", 443))


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_round_trip_matches_folder_form(arch, request):
    from diffusers import DiffusionPipeline

    path = request.getfixturevalue(f"{arch}_file")
    folder = DiffusionPipeline.from_pretrained(request.getfixturevalue(f"tiny_{arch}_dir"), local_files_only=True)
    loaded = load_single_file(path)
    expected_cls = "StableDiffusionXLPipeline" if arch == "sdxl" else "StableDiffusionPipeline"
    assert type(loaded).__name__ == expected_cls
    assert loaded.arch_info.family == ("sdxl" if arch == "sdxl" else "sd1")
    _assert_same_weights(folder, loaded, arch)
    for key in ("block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim"):
        assert list(torch.atleast_1d(torch.tensor(loaded.unet.config[key]))) == \
            list(torch.atleast_1d(torch.tensor(folder.unet.config[key]))), key
    assert loaded.vae.config.scaling_factor == folder.vae.config.scaling_factor
    assert np_equal(_image(folder, folder.scheduler), _image(loaded, folder.scheduler))


def np_equal(a, b) -> bool:
    return a.shape == b.shape and float(abs(a - b).max()) < 1e-5


WELL_KNOWN = {
    "sd15": [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.out.2.weight",
        "model.diffusion_model.time_embed.0.weight",
        "first_stage_model.decoder.mid.attn_1.q.weight",
        "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.up.3.block.2.conv2.weight",
        "first_stage_model.quant_conv.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc2.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ],
    "sdxl": [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.bias",
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_v.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.transformer.resblocks.3.mlp.c_fc.weight",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.token_embedding.weight",
        "conditioner.embedders.1.model.ln_final.bias",
    ],
}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_written_file_uses_real_ldm_names_and_shapes(arch, request):
    sd = load_file(str(request.getfixturevalue(f"{arch}_file")))
    for key in WELL_KNOWN[arch]:
        assert key in sd, key
    assert sd["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # LDM: 1x1 conv
    assert not any(k.startswith(("unet.", "vae.", "text_encoder")) for k in sd)


def test_diffusers_converters_reproduce_original_tensors(sdxl_file):
    """diffusers' own LDM -> diffusers functions read our file back to the exact diffusers tensors."""
    pipe = build_tiny_pipeline("sdxl")
    sd = load_file(str(sdxl_file))
    unet = convert_ldm_unet_checkpoint(sd, dict(pipe.unet.config))
    vae = convert_ldm_vae_checkpoint(sd, dict(pipe.vae.config))
    te1 = convert_ldm_clip_checkpoint(sd)
    te2 = convert_open_clip_checkpoint(pipe.text_encoder_2, sd, prefix="conditioner.embedders.1.model.")
    te1_ref = {("" if k.startswith("text_model.") else "text_model.") + k: v
               for k, v in pipe.text_encoder.state_dict().items()}
    for got, ref in ((unet, pipe.unet.state_dict()), (vae, pipe.vae.state_dict()), (te1, te1_ref),
                     (te2, pipe.text_encoder_2.state_dict())):
        ref = {k: v for k, v in ref.items() if not k.endswith("position_ids")}
        assert set(got) == set(ref), sorted(set(got) ^ set(ref))[:5]
        for key, value in ref.items():
            assert torch.equal(got[key], value), key


def test_save_metadata_dtype_and_atomicity(tmp_path, monkeypatch):
    pipe = build_tiny_pipeline("sd15")
    target = tmp_path / "m.safetensors"
    save_single_file(pipe, target, dtype=torch.float16, metadata={"ss_note": "hi", "steps": 5})
    with safe_open(str(target), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
    assert meta["ss_note"] == "hi" and meta["steps"] == "5"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]

    before = target.read_bytes()

    def crash(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_single_file(pipe, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    with pytest.raises(CheckpointError, match="safetensors"):
        save_single_file(pipe, tmp_path / "m.ckpt")


def test_v_prediction_marker_round_trips(tmp_path):
    from diffusers import EulerDiscreteScheduler

    pipe = build_tiny_pipeline("sd15")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    path = save_single_file(pipe, tmp_path / "v.safetensors")
    assert "v_pred" in load_file(str(path))
    loaded = load_single_file(path, dtype=torch.float16)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.unet.dtype == torch.float16 and loaded.text_encoder.dtype == torch.float16


def test_pickle_refused_unless_allowed(tmp_path, sd15_file):
    sd, _ = read_state_dict(sd15_file)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 10}, ckpt)
    with pytest.raises(PickleRefusedError, match="allow-pickle"):  # the one refusal of core.files
        load_single_file(ckpt)
    loaded = load_single_file(ckpt, allow_pickle=True)
    _assert_same_weights(build_tiny_pipeline("sd15"), loaded, "sd15")


def test_missing_vae_needs_vae_option_and_vae_file_loads(tmp_path, sd15_file):
    sd, _ = read_state_dict(sd15_file)
    no_vae = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in sd.items() if k.startswith("first_stage_model.")}
    save_file(no_vae, str(tmp_path / "novae.safetensors"))
    save_file(vae_only, str(tmp_path / "vae.safetensors"))
    with pytest.raises(CheckpointError, match="--vae"):
        load_single_file(tmp_path / "novae.safetensors")
    reference = build_tiny_pipeline("sd15")
    vae = load_vae_file(tmp_path / "vae.safetensors")
    for key, value in reference.vae.state_dict().items():
        assert torch.equal(vae.state_dict()[key], value), key
    pipe = load_single_file(tmp_path / "novae.safetensors", vae=tmp_path / "vae.safetensors")
    _assert_same_weights(reference, pipe, "sd15")
    with pytest.raises(CheckpointError, match="standalone VAE"):
        load_single_file(tmp_path / "vae.safetensors")


def test_damaged_files_name_the_problem(tmp_path, sd15_file):
    sd, _ = read_state_dict(sd15_file)
    del sd["model.diffusion_model.input_blocks.1.0.in_layers.0.weight"]
    save_file(sd, str(tmp_path / "holed.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing 1: down_blocks\.0\.resnets\.0\.norm1\.weight"):
        load_single_file(tmp_path / "holed.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(sd15_file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_single_file(tmp_path / "trunc.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_single_file(tmp_path / "absent.safetensors")
    (tmp_path / "x.gguf").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_single_file(tmp_path / "x.gguf")
