"""Presets for the anime base models people run today, and `preset="auto"` (issue #16).

What each preset holds comes from its model card (cited in presets.toml); these tests pin the parts of
the cards that change the prompt or the settings, and the rules that recognise a model for "auto".
"""

import dataclasses
import logging

import numpy as np
import pytest
from safetensors.numpy import save_file

from animegen.core.files import sha256_file
from animegen.generate.request import GenerationRequest, resolve
from animegen.prompts import presets as presets_module
from animegen.prompts.presets import AUTO, build_prompt, detect_preset, get_preset, list_presets
from animegen.prompts.tags import split_tags

MODEL_PRESETS = ("animagine-xl-3.1", "animagine-xl-4.0", "illustrious-xl", "noobai-xl-eps", "noobai-xl-vpred",
                 "pony-v6", "kohaku-xl", "wd-1.4", "wd-1.5", "dashanime-xl")
PONY_SCORES = ["score_9", "score_8_up", "score_7_up", "score_6_up", "score_5_up", "score_4_up"]


@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_each_model_preset_loads_and_keeps_the_prompt(name):
    preset = get_preset(name)
    assert preset.name == name and preset.description
    assert "1girl" in split_tags(build_prompt(preset, "1girl, smile"))


def test_existing_presets_keep_their_place_and_animagine_is_3_1():
    names = [p.name for p in list_presets()]
    assert names[:4] == ["animagine", "dashanime", "danbooru", "none"]
    assert set(MODEL_PRESETS) <= set(names)
    old, v31 = get_preset("animagine"), get_preset("animagine-xl-3.1")
    same = {f.name for f in dataclasses.fields(old)} - {"name", "description"}
    assert {k: getattr(old, k) for k in same} == {k: getattr(v31, k) for k in same}


def test_pony_puts_the_score_tags_first_with_clip_skip_2_and_no_negative():
    pony = get_preset("pony-v6")
    assert split_tags(build_prompt(pony, "1girl, solo, smile")) == [*PONY_SCORES, "1girl", "solo", "smile"]
    assert (pony.clip_skip, pony.negative, pony.sampler, pony.steps, pony.width, pony.height) == (
        2, "", "Euler a", 25, 1024, 1024)


def test_animagine_4_uses_its_own_quality_tags_and_negative():
    v31 = split_tags(build_prompt("animagine-xl-3.1", "smile, 1girl"))
    v40 = split_tags(build_prompt("animagine-xl-4.0", "smile, 1girl"))
    assert v31[0] == v40[0] == "1girl"  # both cards: count tag first (tag ordering)
    assert v31[-4:] == ["masterpiece", "best quality", "very aesthetic", "absurdres"]
    assert v40[-4:] == ["masterpiece", "high score", "great score", "absurdres"]
    assert "very aesthetic" not in v40
    n31, n40 = get_preset("animagine-xl-3.1").negative, get_preset("animagine-xl-4.0").negative
    assert "low score" in n40 and "average score" in n40 and "low score" not in n31
    assert "displeasing" in n31 and "displeasing" not in n40


def test_noobai_prefix_caption_order_and_vpred_cfg_rescale():
    out = build_prompt("noobai-xl-eps", "smile, masterpiece, 1girl", tags={"character": ["hatsune_miku"]})
    assert split_tags(out) == ["masterpiece", "best quality", "newest", "absurdres", "highres", "safe",
                               "1girl", "hatsune miku", "smile"]
    eps, vpred = get_preset("noobai-xl-eps"), get_preset("noobai-xl-vpred")
    assert eps.guidance_rescale is None and vpred.guidance_rescale == 0.7
    assert vpred.sampler == "Euler" and eps.sampler == "Euler a"
    assert build_prompt(vpred, "1girl") == build_prompt(eps, "1girl")  # same prompt format, other sampling


def test_user_presets_can_extend_another(tmp_path):
    user = tmp_path / "mine.toml"
    user.write_text('[presets.my-pony]\nextends = "pony-v6"\nsteps = 30\n\n'
                    '[presets.my-pony-2]\nextends = "my-pony"\ncfg_scale = 6\n')
    mine, mine2 = get_preset("my-pony", user), get_preset("my-pony-2", user)
    assert (mine.steps, mine.clip_skip, mine.name) == (30, 2, "my-pony")
    assert (mine2.steps, mine2.cfg_scale, mine2.template) == (30, 6.0, get_preset("pony-v6").template)


@pytest.mark.parametrize("name, expected", [
    ("cagliostrolab/animagine-xl-4.0", "animagine-xl-4.0"),
    ("models/animagineXL40_v4Opt.safetensors", "animagine-xl-4.0"),
    ("cagliostrolab/animagine-xl-3.1", "animagine-xl-3.1"),
    ("animagineXLV31_v31.safetensors", "animagine-xl-3.1"),
    ("noobaiXLNAIXL_vPred10Version.safetensors", "noobai-xl-vpred"),
    ("Laxhar/noobai-XL-Vpred-1.0", "noobai-xl-vpred"),
    ("noobaiXLNAIXL_epsilonPred11Version.safetensors", "noobai-xl-eps"),
    ("Laxhar/noobai-XL-1.1", "noobai-xl-eps"),
    ("ponyDiffusionV6XL_v6StartWithThisOne.safetensors", "pony-v6"),
    ("OnomaAIResearch/Illustrious-xl-early-release-v0", "illustrious-xl"),
    ("KBlueLeaf/Kohaku-XL-Epsilon", "kohaku-xl"),
    ("waifu-diffusion/wd-1-5-beta2", "wd-1.5"),
    ("hakurei/waifu-diffusion-v1-4", "wd-1.4"),
    ("wd-1-4-anime_e1.ckpt", "wd-1.4"),
    ("dashAnimeXL_v1.safetensors", "dashanime-xl"),
    ("animagine-xl-4.0/model.safetensors", "animagine-xl-4.0"),  # a generic file name: its folder names it
    ("sd_xl_base_1.0.safetensors", None),
    ("sword15_mix.safetensors", None),  # "wd15" inside a word is not Waifu Diffusion
    ("models/tiny-sd15", None),
])
def test_detect_preset_from_the_name(name, expected):
    assert detect_preset(name) == expected


def test_detect_preset_metadata_wins_over_the_name():
    assert detect_preset("merge.safetensors", {"modelspec.title": "Animagine XL 4.0 Opt"}) == "animagine-xl-4.0"
    assert detect_preset("animagine-xl-3.1.safetensors", {"modelspec.title": "Pony Diffusion V6 XL"}) == "pony-v6"
    tuned = {"ss_sd_model_name": "noobaiXLNAIXL_epsilonPred11Version.safetensors"}
    assert detect_preset("finetune.safetensors", tuned) == "noobai-xl-eps"
    assert detect_preset("finetune.safetensors", {**tuned, "ss_v_parameterization": "True"}) == "noobai-xl-vpred"
    assert detect_preset("x.safetensors", {"modelspec.title": "NoobAI XL", "modelspec.prediction_type": "v"}) \
        == "noobai-xl-vpred"
    assert detect_preset("x.safetensors", {"modelspec.title": "my merge"}) is None


def test_detect_preset_reads_a_single_file_header(tmp_path):
    path = tmp_path / "final.safetensors"
    save_file({"w": np.zeros(2, dtype=np.float32)}, str(path), metadata={"modelspec.title": "Illustrious XL v0.1"})
    assert detect_preset(path) == "illustrious-xl"


def test_detect_preset_by_documented_hash(tmp_path, monkeypatch):
    for short, name in presets_module.KNOWN_HASHES.items():  # only hashes the model cards print
        assert len(short) == 10 and short == short.lower() and name in {p.name for p in list_presets()}
    path = tmp_path / "renamed.safetensors"
    save_file({"w": np.ones(2, dtype=np.float32)}, str(path))
    assert detect_preset(path) is None
    monkeypatch.setitem(presets_module.KNOWN_HASHES, sha256_file(path)[:10], "pony-v6")
    assert detect_preset(path) == "pony-v6"


def test_auto_resolves_to_the_detected_preset_or_none_with_a_notice(caplog):
    assert get_preset(AUTO, model="cagliostrolab/animagine-xl-4.0").name == "animagine-xl-4.0"
    with caplog.at_level(logging.INFO, logger="animegen.prompts.presets"):
        assert get_preset(AUTO, model="sd_xl_base_1.0.safetensors").name == "none"
    notices = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(notices) == 1 and "sd_xl_base_1.0.safetensors" in notices[0] and "none" in notices[0]
    with pytest.raises(ValueError, match="auto"):
        get_preset("autoo")  # the list of valid names offers "auto" too


def test_resolve_applies_the_auto_preset_clip_skip_and_cfg_rescale():
    pony = resolve(GenerationRequest(prompt="1girl", preset=AUTO), 1024, model="ponyDiffusionV6XL_v6.safetensors")
    assert split_tags(pony.prompt)[:6] == PONY_SCORES and pony.clip_skip == 2 and pony.steps == 25
    vpred = resolve(GenerationRequest(prompt="1girl", preset="noobai-xl-vpred"), 1024)
    assert vpred.guidance_rescale == 0.7 and vpred.sampler == "Euler"
    asked = resolve(GenerationRequest(prompt="1girl", preset="noobai-xl-vpred", guidance_rescale=0.3,
                                      clip_skip=3), 1024)
    assert asked.guidance_rescale == 0.3 and asked.clip_skip == 3  # the request's own values win
    plain = resolve(GenerationRequest(prompt="1girl", preset=AUTO), 512, model="models/tiny-sd15")
    assert plain.prompt == "1girl" and plain.clip_skip == 1 and plain.guidance_rescale == 0.0
