"""write_lora / read_lora round trips, kohya headers, naming, atomic writes and A1111's hash."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct

import pytest
import torch
from safetensors import safe_open

from animegen.models.lora import LoraFile, LoraModule, lora_hash, read_lora, write_lora
from animegen.models.lora.names import diffusers_to_ldm_unet, ldm_to_diffusers_unet

_SEED = itertools.count(1)


def _t(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(next(_SEED)))


def _every_kind(sdxl: bool) -> LoraFile:
    te = "text_encoder_2" if sdxl else "text_encoder"
    mods = [
        LoraModule("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "lora",
                   {"lora_down.weight": _t(4, 64), "lora_up.weight": _t(64, 4)}, 2.0),
        LoraModule("unet.down_blocks.1.resnets.0.conv1", "lora",
                   {"lora_down.weight": _t(2, 64, 3, 3), "lora_up.weight": _t(64, 2, 1, 1)}, None),
        LoraModule("unet.down_blocks.2.resnets.1.conv2", "lora",
                   {"lora_down.weight": _t(2, 64, 1, 1), "lora_mid.weight": _t(2, 2, 3, 3),
                    "lora_up.weight": _t(64, 2, 1, 1)}, 1.0),
        LoraModule("unet.mid_block.attentions.0.proj_in", "loha",
                   {"hada_w1_a": _t(8, 2), "hada_w1_b": _t(2, 8), "hada_w2_a": _t(8, 2), "hada_w2_b": _t(2, 8)}, 0.1),
        LoraModule("unet.up_blocks.1.attentions.0.proj_out", "lokr",
                   {"lokr_w1_a": _t(4, 2), "lokr_w1_b": _t(2, 4), "lokr_w2": _t(2, 2)}, 1.0),
        LoraModule("unet.up_blocks.1.resnets.2.conv_shortcut", "lokr", {"lokr_w1": _t(2, 2), "lokr_w2": _t(2, 2, 1, 1)}),
        LoraModule("unet.time_embedding.linear_1", "ia3", {"weight": _t(8), "on_input": torch.tensor(True)}),
        LoraModule("unet.conv_out", "full", {"diff": _t(4, 8, 3, 3), "diff_b": _t(4)}),
        LoraModule(f"{te}.text_model.encoder.layers.0.self_attn.q_proj", "lora",
                   {"lora_down.weight": _t(4, 64).half(), "lora_up.weight": _t(64, 4).half()}, 4.0),
    ]
    return LoraFile({m.target: m for m in mods})


@pytest.mark.parametrize("sdxl", [False, True])
@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_read_of_write_is_identity_for_every_kind(tmp_path, fmt, sdxl):
    lf = _every_kind(sdxl)
    path = write_lora(lf, tmp_path / "x.safetensors", format=fmt, sdxl=sdxl)
    back = read_lora(path)
    assert back == lf
    for target, module in lf.modules.items():  # alpha None stays None in kohya files
        if fmt == "kohya":
            assert back.modules[target].alpha == module.alpha
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp file left behind


def test_kohya_keys_and_header(tmp_path):
    lf = _every_kind(sdxl=True)
    tags = {"5_girl": {"1girl": 10, "solo": 7}}
    path = write_lora(lf, tmp_path / "k.safetensors", metadata={"ss_tag_frequency": tags, "ss_epoch": 3},
                      sdxl=True)
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    # kohya SDXL naming: SGM UNet names, lora_te2_ for the second text encoder
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha" in keys
    assert "lora_unet_middle_block_1_proj_in.hada_w1_a" in keys
    assert "lora_unet_out_2.diff_b" in keys
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["ss_tag_frequency"]) == tags and meta["ss_epoch"] == "3"
    assert meta["ss_base_model_version"].startswith("sdxl")
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert meta["sshs_model_hash"] == hashlib.sha256(_payload(path)).hexdigest()


def test_plain_lora_header_sd15(tmp_path):
    lf = _every_kind(sdxl=False)
    lf = LoraFile({t: m for t, m in lf.modules.items() if m.kind == "lora" and t.endswith("to_q")})
    path = write_lora(lf, tmp_path / "p.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
                                 "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
                                 "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha"}
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], float(meta["ss_network_alpha"])) == ("4", 2.0)
    assert meta["ss_base_model_version"] == "sd_v1"


def _payload(path) -> bytes:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 + n:]


def test_lora_hash_is_a1111_addnet_hash(tmp_path):
    lf = _every_kind(sdxl=False)
    a = write_lora(lf, tmp_path / "a.safetensors", metadata={"ss_output_name": "a"})
    b = write_lora(lf, tmp_path / "b.safetensors", metadata={"ss_output_name": "something much longer"})
    assert lora_hash(a) == hashlib.sha256(_payload(a)).hexdigest()[:12]
    assert lora_hash(a) == lora_hash(b)  # the header (metadata) is not hashed
    assert len(lora_hash(a)) == 12


@pytest.mark.parametrize("ldm, diffusers", [
    ("input_blocks.0.0", "conv_in"),
    ("input_blocks.1.0.in_layers.2", "down_blocks.0.resnets.0.conv1"),
    ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
    ("input_blocks.5.1.proj_in", "down_blocks.1.attentions.1.proj_in"),
    ("input_blocks.7.0.skip_connection", "down_blocks.2.resnets.0.conv_shortcut"),
    ("middle_block.0.emb_layers.1", "mid_block.resnets.0.time_emb_proj"),
    ("middle_block.2.out_layers.3", "mid_block.resnets.1.conv2"),
    ("output_blocks.0.0.out_layers.3", "up_blocks.0.resnets.0.conv2"),
    ("output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv"),
    ("output_blocks.8.1.transformer_blocks.0.attn2.to_out.0", "up_blocks.2.attentions.2.transformer_blocks.0.attn2.to_out.0"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("out.0", "conv_norm_out"),
])
def test_ldm_unet_names(ldm, diffusers):
    assert ldm_to_diffusers_unet(ldm) == diffusers
    assert diffusers_to_ldm_unet(diffusers) == ldm


def test_old_diffusers_attn_processor_and_te_keys(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file({"unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": _t(2, 8),
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": _t(8, 2),
               "text_encoder.encoder.layers.0.mlp.fc1.lora_A.weight": _t(2, 8),
               "text_encoder.encoder.layers.0.mlp.fc1.lora_B.weight": _t(8, 2)}, str(path))
    assert set(read_lora(path).modules) == {"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
                                            "text_encoder.text_model.encoder.layers.0.mlp.fc1"}


def test_sdxl_names_agree_with_single_file_mapping(sdxl):
    """Cross-check against `animegen.models.ldm_names` (written independently for checkpoints)."""
    ldm_names = pytest.importorskip("animegen.models.ldm_names")
    reference = ldm_names.unet_module_map(sdxl.unet.config)
    weighted = [n for n, m in sdxl.unet.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)]
    assert len(weighted) > 300
    assert {n: diffusers_to_ldm_unet(n) for n in weighted} == {n: reference[n] for n in weighted}
    assert all(ldm_to_diffusers_unet(reference[n]) == n for n in weighted)
