"""Each exported adapter file loads where its name promises (issue #12 item 13), for every adapter family.

`NAME.safetensors` is the kohya/LyCORIS file: our A1111-compatible reader (`models.lora`) loads it and
reproduces the trained model. `NAME_diffusers.safetensors` exists only where diffusers'
`pipe.load_lora_weights` really loads it (plain LoRA and LoCon: diffusers has no IA3, LoHa, LoKr or
full-diff loader), and diffusers then reproduces the trained model too. The trained peft model is the
reference. Files that earlier versions wrote as `_diffusers` for other kinds still read in animegen.
"""

from __future__ import annotations

import copy

import pytest
import torch
from train_helpers import write_kohya
from typer.testing import CliRunner

from animegen.models.lora import apply_loras, read_lora, remove_loras, write_lora
from animegen.models.tiny import build_tiny_pipeline
from animegen.train.adapters import prepare_models
from animegen.train.config import validate_config
from animegen.train.export import adapters_to_lora_file, export_adapters

KINDS = [("sd15", "lora", "attention", True), ("sd15", "locon", "attention_ff_conv", False),
         ("sd15", "loha", "attention_ff_conv", False), ("sd15", "lokr", "attention_ff", True),
         ("sd15", "ia3", "attention_ff", True), ("sd15", "dora", "attention", False),
         ("sdxl", "lora", "attention", True)]
DIFFUSERS_LOADS = {"lora", "locon"}  # what diffusers 0.3x-0.4x `load_lora_weights` accepts of these kinds


def _outputs(pipe) -> dict[str, torch.Tensor]:
    """The UNet's output on fixed latents and conditioning, and each text encoder's on a fixed prompt."""
    g = torch.Generator().manual_seed(0)
    cfg = pipe.unet.config
    kwargs = {"sample": torch.randn(1, 4, 8, 8, generator=g), "timestep": torch.tensor([500]),
              "encoder_hidden_states": torch.randn(1, 8, cfg.cross_attention_dim, generator=g)}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    with torch.no_grad():
        out = {"unet": pipe.unet(**kwargs).sample}
        for name in ("text_encoder", "text_encoder_2"):
            if getattr(pipe, name, None) is not None:
                tokenizer = pipe.tokenizer_2 if name == "text_encoder_2" else pipe.tokenizer
                ids = tokenizer(["zxq, 1girl"], padding="max_length", max_length=77, return_tensors="pt").input_ids
                out[name] = getattr(pipe, name)(ids).last_hidden_state
    return out


def _trained(arch, kind, targets, te):
    pipe = build_tiny_pipeline(arch, seed=0)
    cfg = validate_config({"adapter": {"kind": kind, "rank": 4, "alpha": 2.0, "targets": targets,
                                       "train_text_encoder": te},
                           "export": {"name": "char", "formats": ["kohya", "diffusers"], "dtype": "fp32"}})
    modules = prepare_models(pipe, cfg.adapter, gradient_checkpointing=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in modules.values():
            for p in module.parameters():
                if p.requires_grad:  # adapters start as an identity: give them a real effect
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return pipe, modules, cfg


def _assert_reproduces(pipe, want, before, kind, who):
    got = _outputs(pipe)
    atol = 5e-4 if kind in ("dora", "ia3") else 1e-5  # activation scaling / per-call norm: other float order
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=atol, rtol=1e-4, msg=lambda m, name=name: f"{who}, {name}: {m}")
    assert all((got[n] - want[n]).abs().max() <= 0.05 * (want[n] - before[n]).abs().max() for n in want)
    assert (want["unet"] - before["unet"]).abs().max() > 1e-3  # the adapter does change the output


@pytest.fixture(scope="module")
def bases():
    """arch -> one untouched pipeline for the module, built on first use (every test removes what it merges)."""
    built: dict[str, object] = {}

    def base(arch):
        if arch not in built:
            built[arch] = build_tiny_pipeline(arch, seed=0)
        return built[arch]

    return base


@pytest.mark.parametrize("arch,kind,targets,te", KINDS)
def test_each_export_loads_where_its_name_promises(tmp_path, bases, arch, kind, targets, te):
    base = bases(arch)
    trained, modules, cfg = _trained(arch, kind, targets, te)
    want, before = _outputs(trained), _outputs(base)
    written = export_adapters(modules, cfg, tmp_path, {"ss_network_dim": "4"})

    names = {"char.safetensors"} | ({"char_diffusers.safetensors"} if kind in DIFFUSERS_LOADS else set())
    assert {p.name for p in tmp_path.iterdir()} == names
    assert {p.name for p in written.values()} == names

    apply_loras(base, [(read_lora(written["kohya"]), 1.0)])  # A1111-compatible kohya/LyCORIS key reader
    try:
        _assert_reproduces(base, want, before, kind, "animegen <- kohya file")
    finally:
        remove_loras(base)
    if kind in DIFFUSERS_LOADS:  # diffusers also converts kohya LoRA/LoCon files itself
        for fmt in ("diffusers", "kohya"):
            theirs = copy.deepcopy(base)
            theirs.load_lora_weights(str(written[fmt]))
            _assert_reproduces(theirs, want, before, kind, f"diffusers <- {written[fmt].name}")


@pytest.mark.parametrize("arch,kind,targets,te", [k for k in KINDS if k[1] not in DIFFUSERS_LOADS])
def test_old_diffusers_named_files_of_other_kinds_still_read(tmp_path, bases, arch, kind, targets, te):
    """What earlier versions wrote as `NAME_diffusers.safetensors` for IA3/LoHa/LoKr/DoRA keeps loading here."""
    base = bases(arch)
    trained, modules, _ = _trained(arch, kind, targets, te)
    want, before = _outputs(trained), _outputs(base)
    old = write_lora(adapters_to_lora_file(modules, kind), tmp_path / "char_diffusers.safetensors", format="diffusers")
    if kind == "dora":  # diffusers drops the dora_scale keys (a warning) and loads another model: not written
        theirs = copy.deepcopy(base)
        theirs.load_lora_weights(str(old))
        assert (_outputs(theirs)["unet"] - want["unet"]).abs().max() > 1e-3
    else:
        with pytest.raises(ValueError):  # ...and diffusers never could load it, which is why it is no longer written
            copy.deepcopy(base).load_lora_weights(str(old))
    apply_loras(base, [(read_lora(old), 1.0)])
    try:
        _assert_reproduces(base, want, before, kind, "animegen <- old _diffusers file")
    finally:
        remove_loras(base)


def test_the_trainer_says_what_loads_each_file_and_why_one_was_not_written(tiny_sd15_dir, tmp_path):
    from animegen.cli.main import app

    data = write_kohya(tmp_path / "data", "zxq", (200, 30, 30), "zxq, 1girl", n=2)
    (tmp_path / "ia3.toml").write_text(f"""
[model]
base = "{tiny_sd15_dir}"
[adapter]
kind = "ia3"
targets = "attention"
[data]
datasets = [{{ path = "{data}" }}]
resolution = 64
min_bucket_side = 64
max_bucket_side = 64
[train]
output_dir = "{tmp_path / 'out'}"
max_steps = 1
batch_size = 1
device = "cpu"
[log]
progress = false
tensorboard = false
[export]
name = "char"
formats = ["kohya", "diffusers"]
""")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "ia3.toml")])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    kohya = next(line for line in lines if line.startswith("kohya: "))
    assert str(tmp_path / "out" / "export" / "char.safetensors") in kohya and "A1111" in kohya
    diffusers = next(line for line in lines if line.startswith("diffusers: "))
    assert "not written" in diffusers and "IA3" in diffusers and "load_lora_weights" in diffusers
    assert not (tmp_path / "out" / "export" / "char_diffusers.safetensors").exists()
