"""Prompt presets: built-ins, user TOML files, prompt building and the `animegen presets` command."""

import pytest
import typer
from typer.testing import CliRunner

from animegen.prompts.presets import Preset, build_prompt, get_preset, list_presets
from animegen.prompts.tags import split_tags


def test_builtins_and_unknown_name():
    assert [p.name for p in list_presets()][:4] == ["animagine", "dashanime", "danbooru", "none"]
    with pytest.raises(ValueError) as err:
        get_preset("animagin")
    for name in ("animagine", "dashanime", "danbooru", "none"):
        assert name in str(err.value)


def test_animagine_recommended_settings():
    p = get_preset("animagine")
    assert (p.sampler, p.steps, p.cfg_scale, p.width, p.height) == ("Euler a", 28, 5.0, 832, 1216)
    assert "lowres" in p.negative and "worst quality" in p.negative


def test_animagine_reorders_free_text():
    out = split_tags(build_prompt("animagine", "smile, hatsune miku, 1girl, masterpiece, Smile, solo"))
    assert out[0] == "1girl"
    assert out[-4:] == ["masterpiece", "best quality", "very aesthetic", "absurdres"]
    assert out.count("masterpiece") == 1
    assert [t.lower() for t in out].count("smile") == 1  # duplicates dropped (case/underscore-insensitive)
    assert out.index("hatsune miku") < out.index("solo")  # free text keeps its order


def test_animagine_orders_categorised_tags():
    out = build_prompt("animagine", "outdoors", tags={
        "general": ["long_hair"], "series": ["vocaloid"], "count": ["1girl"],
        "character": ["hatsune_miku_(append)"], "meta": ["highres"],
    }, rating="sensitive")
    assert out == ("1girl, hatsune miku \\(append\\), vocaloid, sensitive, long hair, outdoors, highres, "
                   "masterpiece, best quality, very aesthetic, absurdres")


def test_animagine_keeps_a_typed_rating_and_allows_dropping_quality():
    out = build_prompt("animagine", "1girl, nsfw, beach", quality="", aesthetic="")
    assert out == "1girl, nsfw, beach"


def test_dashanime_template_without_dangling_separators():
    assert build_prompt("dashanime", "a girl under cherry blossoms") == (
        "anime illustration, a girl under cherry blossoms. masterpiece, best quality, very aesthetic, safe")
    assert build_prompt("dashanime", "a girl", quality="", rating="") == "anime illustration, a girl. very aesthetic"
    assert build_prompt("dashanime", "a girl", quality="", aesthetic="", rating="") == "anime illustration, a girl"
    assert build_prompt("dashanime", "") == "anime illustration. masterpiece, best quality, very aesthetic, safe"
    assert build_prompt("dashanime", "a cat,", aesthetic="") == "anime illustration, a cat. masterpiece, best quality, safe"


def test_none_and_danbooru_keep_text():
    text = "  (1girl:1.2), solo,, <lora:x:0.5> "
    assert build_prompt("none", text) == text
    assert get_preset("none").negative == ""
    assert build_prompt("danbooru", "solo, 1girl") == "solo, 1girl"
    assert build_prompt("danbooru", "solo", tags={"character": ["kaname_madoka"]}) == "kaname madoka, solo"
    with pytest.raises(ValueError, match="categor"):
        build_prompt("danbooru", "x", tags={"colour": ["red"]})


def test_user_file_overrides_and_adds(tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text(
        '[presets.animagine]\nsteps = 30\n\n'
        '[presets.pony]\ntemplate = "score_9, score_8_up, {prompt}"\nnegative = "score_4"\ncfg_scale = 7\n'
    )
    animagine = get_preset("animagine", user)
    assert animagine.steps == 30 and animagine.cfg_scale == 5.0  # unspecified keys inherited
    pony = get_preset("pony", user)
    assert isinstance(pony, Preset) and pony.cfg_scale == 7.0 and pony.negative == "score_4"
    assert build_prompt(pony, "1girl") == "score_9, score_8_up, 1girl"
    assert [p.name for p in list_presets(user)] == [p.name for p in list_presets()] + ["pony"]  # built-ins, then new
    assert get_preset("animagine").steps == 28  # built-ins untouched


@pytest.mark.parametrize("body, message", [
    ('[presets.x]\ntemplate = "{prompt}"\nstepz = 3\n', "stepz"),
    ('[presets.x]\ntemplate = "{prompt}, {mood}"\n', "mood"),
    ('[presets.x]\ntemplate = "masterpiece"\n', "{prompt}"),
    ('[presets.x]\nsteps = "many"\n', "steps"),
    ('[presets.x]\nwidth = 500\n', "multiple of 8"),
    ('[presets.x]\ntag_order = ["count", "colour"]\n', "colour"),
    ('[presets.x]\nsampler = "Euler z"\n', "Euler z"),
    ('[preset.x]\nsteps = 3\n', "preset"),
    ('[presets.x\n', "TOML"),
    ('[presets.x]\nextends = "ponyv6"\n', "ponyv6"),
    ('[presets.x]\nguidance_rescale = 1.5\n', "guidance_rescale"),
    ('[presets.x]\nclip_skip = 0\n', "clip_skip"),
    ('[presets.auto]\nsteps = 3\n', "reserved"),
])
def test_user_file_errors_name_the_problem(tmp_path, body, message):
    user = tmp_path / "bad.toml"
    user.write_text(body)
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        list_presets(user)


def test_missing_user_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        get_preset("none", tmp_path / "nope.toml")


def test_presets_command(tmp_path):
    from animegen.cli.presets import register

    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command keeps Typer from collapsing `presets` into the root
        pass

    runner = CliRunner()
    result = runner.invoke(app, ["presets"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("animagine", "dashanime", "danbooru", "none"):
        assert name in result.output
    result = runner.invoke(app, ["presets", "animagine"], terminal_width=200)
    assert result.exit_code == 0 and "[abstract]" in result.output  # shown literally, not as markup
    bad = tmp_path / "bad.toml"
    bad.write_text('[presets.x]\nfoo = 1\n')
    result = runner.invoke(app, ["presets", "--file", str(bad)])
    assert result.exit_code == 2 and "foo" in result.output
