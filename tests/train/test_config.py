"""Config: presets validate, errors name the key and the valid choices, overrides are type-checked."""

from __future__ import annotations

import tomllib

import pytest
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.train.config import ConfigError, load_config, stage_config, validate_config
from animegen.train.presets import PRESETS, preset_text

runner = CliRunner()


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_a_valid_annotated_config(name):
    text = preset_text(name)
    assert text.lstrip().startswith("#")  # annotated
    cfg = validate_config(tomllib.loads(text))
    for i in range(len(cfg.stages)):
        stage_config(cfg, i)


def test_character_ia3_is_the_papers_recipe():
    cfg = validate_config(tomllib.loads(preset_text("character-ia3")))
    assert (cfg.adapter.kind, cfg.optimizer.name, cfg.train.max_steps) == ("ia3", "prodigy", 10000)
    assert cfg.optimizer.prodigy_safeguard_warmup is False and cfg.optimizer.prodigy_use_bias_correction


def test_dashanime_stages_differ_as_described():
    cfg = validate_config(tomllib.loads(preset_text("dashanime-two-stage")))
    s1, s2 = stage_config(cfg, 0), stage_config(cfg, 1)
    assert s1.adapter.train_text_encoder and not s2.adapter.train_text_encoder
    assert s1.optimizer.name == s2.optimizer.name == "adafactor"
    assert len(s1.data.datasets[0].caption_columns) == 2 and s2.data.datasets[0].caption_columns == ["caption"]


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        validate_config({"optimizer": {"learning_rate": 1e-4}})
    msg = str(e.value)
    assert "optimizer.learning_rate" in msg and "lr" in msg and "weight_decay" in msg


def test_bad_choice_lists_valid_choices():
    with pytest.raises(ConfigError) as e:
        validate_config({"adapter": {"kind": "lycoris"}})
    msg = str(e.value)
    assert "adapter.kind" in msg and "'lokr'" in msg and "'ia3'" in msg


def test_override_is_type_checked_and_applied(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[optimizer]\nlr = 1e-4\n')
    cfg = load_config(f, ["optimizer.lr=3e-4", "adapter.kind=loha", "data.random_flip=true",
                          "sample.prompts=['a', 'b']"])
    assert cfg.optimizer.lr == 3e-4 and cfg.adapter.kind == "loha" and cfg.data.random_flip is True
    assert cfg.sample.prompts == ["a", "b"]
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(f, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(f, ["optimizer.lr"])


def test_inconsistent_options_are_rejected():
    with pytest.raises(ConfigError, match="single_file"):
        validate_config({"adapter": {"kind": "lora"}, "export": {"formats": ["single_file"]}})
    with pytest.raises(ConfigError, match="nothing to train"):
        validate_config({"adapter": {"train_unet": False, "train_text_encoder": False}})
    with pytest.raises(ConfigError, match="stages\\[0\\]"):
        validate_config({"stages": [{"name": "a", "optimizer": {"name": "sgd"}}]})


def test_cli_init_writes_preset_and_rejects_unknown(tmp_path):
    out = tmp_path / "c.toml"
    r = runner.invoke(app, ["train", "init", "--preset", "style-lora", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert tomllib.loads(out.read_text()) == tomllib.loads(preset_text("style-lora"))
    r = runner.invoke(app, ["train", "init", "--preset", "nope", "--out", str(tmp_path / "x.toml")])
    assert r.exit_code == 2 and "character-ia3" in r.output


def test_cli_bad_config_errors_before_loading_a_model(tmp_path, monkeypatch):
    from animegen.train import trainer

    monkeypatch.setattr(trainer, "load_base", lambda *a, **k: pytest.fail("model loaded"))
    f = tmp_path / "c.toml"
    f.write_text('[model]\nbase = "x"\n[adapter]\nkind = "lora"\n')
    r = runner.invoke(app, ["train", str(f), "--set", "loss.type=l3"])
    assert r.exit_code == 2 and "loss.type" in r.output and "huber" in r.output
    r = runner.invoke(app, ["train", str(f)])  # no datasets: a data error, still before the model
    assert r.exit_code == 2 and "data.datasets" in r.output
    r = runner.invoke(app, ["train", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "not found" in r.output
