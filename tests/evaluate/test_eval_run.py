"""End to end on the tiny SD1.5 model: `run_eval`, the HTML report, `compare`, and the `animegen eval` CLI."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from eval_testutils import write_images
from typer.testing import CliRunner

from animegen.cli.main import app
from animegen.data.tagger import TagResult
from animegen.evaluate.metrics import MetricError
from animegen.evaluate.run import compare, load_prompts, run_eval
from animegen.generate.infotext import parse_infotext, read_png_infotext

PROMPTS = ["1girl, blue hair, smile, masterpiece", "1boy, red hair, outdoors"]


class FakeTagger:
    """WD14Tagger's interface with a fixed answer: finds 1girl/1boy and blue hair, never the rest."""

    names = ("1girl", "1boy", "blue_hair", "red_hair", "smile", "outdoors", "general", "sensitive")
    categories = (0, 0, 0, 0, 0, 0, 9, 9)
    name = "fake-wd14"

    def tag(self, images, general_threshold=0.35, character_threshold=0.85):
        return [TagResult(rating="general", general={"1girl": 0.9, "1boy": 0.8, "blue_hair": 0.7}, character={})
                for _ in images]


@pytest.fixture(scope="module")
def eval_run(tiny_sd15_dir, tiny_clip_dir, fid_net, tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    real = root / "real"
    write_images(real, 2, seed=7, sizes=((64, 64), (96, 64)))
    prompts = root / "prompts.txt"
    prompts.write_text("# eval prompts\n" + "\n".join(PROMPTS) + "\n\n")
    out = root / "run"
    data = run_eval(tiny_sd15_dir, prompts, out, real_dir=real, n_per_prompt=2, seed=10, steps=2, width=64,
                    height=64, inception=fid_net, bootstrap=20, kid_subsets=5, clip_model=tiny_clip_dir,
                    tagger=FakeTagger(), cache_dir=root / "cache", progress=False)
    return root, out, data


def test_run_writes_seeded_pngs_with_infotext_and_metrics_json(eval_run):
    _, out, data = eval_run
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["metrics"].keys() == {"fid", "kid", "clip_score", "tag_adherence"}
    assert on_disk["skipped"] == {}
    seeds = [img["seed"] for img in on_disk["images"]]
    assert seeds == [10, 11, 12, 13]  # prompt i, image j -> seed + i * n_per_prompt + j
    for img in on_disk["images"]:
        info = parse_infotext(read_png_infotext(out / img["file"]))
        assert info["Prompt"] == PROMPTS[img["prompt_index"]]
        assert int(info["Seed"]) == img["seed"]
    fid = on_disk["metrics"]["fid"]
    assert fid["n_real"] == 2 and fid["n_fake"] == 4 and fid["comparable"] is False
    assert fid["ci"]["low"] <= fid["value"] <= fid["ci"]["high"]
    assert any("RANDOM" in w for w in on_disk["warnings"])
    assert any("biased" in w for w in on_disk["warnings"])
    clip = on_disk["metrics"]["clip_score"]
    assert len(clip["per_image"]) == 4 and 0 <= clip["mean"] <= 100
    tags = on_disk["metrics"]["tag_adherence"]
    # Fake tagger: prompt 0 asks 1girl, blue hair, smile -> 2/3 found; prompt 1 asks 1boy, red hair, outdoors -> 1/3
    assert tags["per_prompt"][PROMPTS[0]]["recall"] == pytest.approx(2 / 3)
    assert tags["per_prompt"][PROMPTS[1]]["recall"] == pytest.approx(1 / 3)
    assert "masterpiece" in tags["ignored_tags"]
    assert data["per_prompt"][1]["missing_tags"] == {"red hair": 2, "outdoors": 2}


def test_report_is_self_contained_with_table_images_and_plots(eval_run):
    _, out, _ = eval_run
    html = (out / "report.html").read_text()
    assert "<table>" in html and "FID" in html and "KID" in html and "CLIP score" in html
    assert "RANDOM WEIGHTS" in html
    assert html.count("data:image/png;base64,") >= 4 + 2  # 4 thumbnails + plots
    assert "1boy, red hair, outdoors" in html
    assert not re.search(r"""src=['"](?!data:)""", html)  # nothing linked from outside the file


def test_compare_two_runs(eval_run):
    root, out, _ = eval_run
    second = root / "run_b"  # a second run that only has some metrics (as if run without --real / --tagger)
    shutil.copytree(out, second)
    data = json.loads((second / "metrics.json").read_text())
    for name in ("fid", "kid", "tag_adherence"):
        data["skipped"][name] = "not requested"
        del data["metrics"][name]
    data["metrics"]["clip_score"]["mean"] = 12.5
    (second / "metrics.json").write_text(json.dumps(data))
    page = compare([out, second], root / "cmp")
    html = page.read_text()
    assert "run_b" in html and "<table>" in html and "data:image/png;base64," in html
    assert "12.50" in html
    summary = json.loads((root / "cmp" / "compare.json").read_text())
    assert [r["label"] for r in summary["runs"]] == ["run", "run_b"]
    assert summary["runs"][1]["metrics"]["clip_score"]["mean"] == 12.5
    with pytest.raises(MetricError, match="at least two"):
        compare([out], root / "cmp2")
    with pytest.raises(MetricError, match="no metrics.json"):
        compare([out, root], root / "cmp2")


def test_prompt_files(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(["a", {"prompt": "b"}]))
    (tmp_path / "p.toml").write_text('prompts = ["x, y", "z"]\n')
    (tmp_path / "bad.toml").write_text("title = 1\n")
    assert load_prompts(tmp_path / "p.json") == ["a", "b"]
    assert load_prompts(tmp_path / "p.toml") == ["x, y", "z"]
    with pytest.raises(MetricError, match="list of prompts"):
        load_prompts(tmp_path / "bad.toml")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(MetricError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")


runner = CliRunner()


def test_cli_fid_kid_and_bad_input(tmp_path):
    write_images(tmp_path / "real", 2, seed=1)
    write_images(tmp_path / "fake", 2, seed=2, sizes=((48, 80),))
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["eval", "fid", str(tmp_path / "real"), str(tmp_path / "fake"), "--weights", "random",
                              "--bootstrap", "10", "--cache-dir", str(tmp_path / "c"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n_real"] == 2 and data["n_fake"] == 2 and data["mode"] == "legacy" and not data["comparable"]
    # The real-set cache is a pytorch-fid style .npz (mu, sigma): usable directly as REAL.
    stats = next((tmp_path / "c").glob("*.npz"))
    res = runner.invoke(app, ["eval", "fid", str(stats), str(tmp_path / "fake"), "--weights", "random", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["value"] == pytest.approx(data["value"], rel=1e-6)
    res = runner.invoke(app, ["eval", "kid", str(stats), str(tmp_path / "fake"), "--weights", "random"])
    assert res.exit_code == 2 and "not a statistics" in res.output
    res = runner.invoke(app, ["eval", "kid", str(tmp_path / "real"), str(tmp_path / "fake"), "--weights", "random",
                              "--kid-subsets", "3", "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "KID:" in res.stdout and "2 subsets" not in res.stdout and "3 subsets of 2" in res.stdout
    res = runner.invoke(app, ["eval", "fid", str(tmp_path / "empty"), str(tmp_path / "fake"), "--weights", "random"])
    assert res.exit_code == 2 and "contains no images" in res.output
    res = runner.invoke(app, ["eval", "fid", str(tmp_path / "real"), str(tmp_path / "fake"),
                              "--weights", str(tmp_path / "missing.pth")])
    assert res.exit_code == 2 and "weights not found" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["eval", "fid", str(tmp_path / "real"), str(tmp_path / "fake"), "--mode", "area"])
    assert res.exit_code == 2 and "legacy" in res.output


def test_cli_clip_run_and_compare(eval_run, tiny_sd15_dir, tiny_clip_dir, tmp_path):
    _, out, _ = eval_run
    res = runner.invoke(app, ["eval", "clip", str(out / "images"), "--clip-model", str(tiny_clip_dir), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n"] == 4  # prompts read back from each PNG's infotext
    prompts = tmp_path / "p.txt"
    prompts.write_text("1girl, smile\n")
    res = runner.invoke(app, ["eval", "clip", str(out / "images"), "--clip-model", str(tiny_clip_dir),
                              "--prompts", str(prompts)])
    assert res.exit_code == 2 and "1 prompts but" in res.output
    res = runner.invoke(app, ["eval", "run", "--model", str(tiny_sd15_dir), "--prompts", str(prompts),
                              "--out", str(tmp_path / "cli_run"), "--n-per-prompt", "1", "--steps", "1",
                              "--width", "64", "--height", "64"])
    assert res.exit_code == 0, res.output
    assert "not computed" in res.stdout and (tmp_path / "cli_run" / "report.html").is_file()
    res = runner.invoke(app, ["eval", "compare", str(out), str(tmp_path / "cli_run"), "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "compare.html").is_file()
