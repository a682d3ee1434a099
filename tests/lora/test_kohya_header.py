"""One kohya `ss_*` network header: a trainer export and a plain `write_lora` of the same file agree on
every key they share, value for value and in kohya's formats (sd-scripts' `train_network.py` writes
`str(v)`: dims as ints, alpha as a float, network args as a JSON object of strings)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from animegen.models.family import SD1, SD2, SDXL
from animegen.models.lora import read_lora, write_lora
from animegen.models.lora.kohya_header import network_metadata
from animegen.models.tiny import build_tiny_pipeline
from animegen.train.adapters import prepare_models
from animegen.train.config import validate_config
from animegen.train.export import export_adapters, kohya_metadata

NETWORK_KEYS = {"ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_v2"}


def _header(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


@pytest.mark.parametrize("kind,targets", [("lora", "attention"), ("locon", "attention_ff_conv"),
                                          ("loha", "attention_ff_conv"), ("lokr", "attention")])
def test_trainer_export_and_plain_write_agree_on_shared_keys(tmp_path, kind, targets):
    cfg = validate_config({"adapter": {"kind": kind, "rank": 4, "alpha": 2.0, "targets": targets},
                           "export": {"formats": ["kohya"], "dtype": "fp32"}})
    pipe = build_tiny_pipeline("sd15", seed=0)
    modules = prepare_models(pipe, cfg.adapter, gradient_checkpointing=False)
    meta = kohya_metadata(cfg, family="sd1", steps=1, num_images=1, started_at=0.0)
    trained = _header(export_adapters(modules, cfg, tmp_path / "export", meta)["kohya"])
    plain = _header(write_lora(read_lora(tmp_path / "export" / "model.safetensors"), tmp_path / "plain.safetensors"))

    shared = (trained.keys() & plain.keys()) - {"sshs_model_hash"}
    assert NETWORK_KEYS - {"ss_network_dim"} <= shared  # full-factor LoKr has no rank in the file
    assert {k: trained[k] for k in shared - {"ss_network_args"}} == {k: plain[k] for k in shared - {"ss_network_args"}}
    assert trained["ss_base_model_version"] == SD1.kohya_base_model_version and trained["ss_v2"] == "False"
    assert trained["ss_network_dim"] == "4" and float(trained["ss_network_alpha"]) == 2.0
    trained_args, plain_args = (json.loads(h.get("ss_network_args", "{}")) for h in (trained, plain))
    assert {k: trained_args[k] for k in plain_args.keys() & trained_args.keys()} == {
        k: plain_args[k] for k in plain_args.keys() & trained_args.keys()}
    assert plain_args.keys() <= trained_args.keys()  # the trainer only adds (dropout, targets)
    assert all(isinstance(v, str) for v in trained_args.values())
    if kind == "locon":
        assert trained["ss_network_module"] == "networks.lora" and trained_args["conv_dim"] == "4"


@pytest.mark.parametrize("family,v_pred,version", [
    (SD1, False, "sd_v1"), (SD1, True, "sd_v1_v"), (SD2, True, "sd_v2_v"), (SDXL, True, "sdxl_base_v1-0")])
def test_base_model_version_is_the_familys_with_kohyas_v_suffix(family, v_pred, version):
    meta = network_metadata(kinds=["lora"], dim=8, alpha=4, family=family, v_prediction=v_pred)
    assert meta["ss_base_model_version"] == version
    assert meta["ss_v2"] == str(family is SD2)
    cfg = validate_config({"model": {"prediction_type": "v_prediction" if v_pred else "epsilon"}})
    trained = kohya_metadata(cfg, family=family, steps=1, num_images=1, started_at=0.0)
    assert trained["ss_base_model_version"] == version


def test_mixed_algorithms_name_lycoris_and_the_main_algorithm():
    meta = network_metadata(kinds=["lora", "loha"], main_kind="loha", dim=4, alpha=None, family=SD1)
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"]) == {"algo": "loha"} and "ss_network_alpha" not in meta


def test_plain_write_uses_the_files_family(tmp_path):
    from animegen.models.lora import LoraFile, LoraModule

    target = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    module = LoraModule(target, "lora", {"lora_down.weight": torch.ones(2, 8), "lora_up.weight": torch.ones(8, 2)})
    header = _header(write_lora(LoraFile({target: module}, {"ss_v2": "True"}), tmp_path / "x.safetensors"))
    assert (header["ss_base_model_version"], header["ss_v2"]) == (SD2.kohya_base_model_version, "True")
