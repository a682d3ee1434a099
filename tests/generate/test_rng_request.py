"""The noise source and ENSD as a request setting: recorded and read as A1111 1.10 does, one name everywhere.

A1111's reading (infotext_utils.parse_generation_parameters, shared_options): "RNG" holds randn_source
(GPU, CPU or NV) and a missing "RNG" means GPU, its default; "ENSD" holds eta_noise_seed_delta, written only
when non-zero and the sampler draws ancestral noise (processing.create_infotext, `uses_ensd`).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from animegen.core.errors import AnimegenError
from animegen.generate.infotext import format_infotext, noise_fields, parse_infotext, parse_noise_fields
from animegen.generate.request import DEFAULT_RNG, GenerationRequest, request_from_infotext, resolve

BASE = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"


def test_an_a1111_infotext_without_rng_means_gpu_noise():
    assert parse_noise_fields(parse_infotext(f"1girl\n{BASE}")) == ("GPU", 0)
    request = request_from_infotext(f"1girl\n{BASE}")
    assert (request.rng, request.eta_noise_seed_delta) == ("GPU", 0)


@pytest.mark.parametrize("fields, expected", [
    ("RNG: NV, ENSD: 31337", ("NV", 31337)),
    ("ENSD: 31337, RNG: CPU", ("CPU", 31337)),
    ("Eta noise seed delta: 31337", ("GPU", 31337)),
    ("RNG: GPU", ("GPU", 0)),
])
def test_rng_and_ensd_are_read(fields, expected):
    text = f"1girl\nNegative prompt: lowres\n{BASE}, {fields}, Version: v1.10.1"
    assert parse_noise_fields(parse_infotext(text)) == expected
    request = request_from_infotext(text)
    assert (request.rng, request.eta_noise_seed_delta) == expected
    resolved = resolve(request, 512)
    assert (resolved.rng, resolved.eta_noise_seed_delta) == expected


def test_an_animegen_infotext_from_before_rng_was_recorded_means_cpu_noise():
    """animegen drew every image's noise from CPU generators until it wrote "RNG"; such a PNG still reproduces."""
    old = f"1girl\n{BASE}, Version: animegen 0.1.0"
    assert parse_noise_fields(parse_infotext(old)) == ("CPU", 0)
    assert parse_noise_fields(parse_infotext(f"1girl\n{BASE}, RNG: GPU, Version: animegen 0.1.0")) == ("GPU", 0)


@pytest.mark.parametrize("rng, ensd, ancestral, written", [
    ("NV", 31337, True, {"RNG": "NV", "ENSD": "31337"}),
    ("CPU", 31337, False, {"RNG": "CPU"}),  # no ancestral noise: ENSD changes nothing, left out
    ("GPU", 0, True, {"RNG": "GPU"}),
])
def test_noise_fields_round_trip(rng, ensd, ancestral, written):
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": "7", "Seed": 1, "Size": "64x64",
              **noise_fields(rng, ensd, sampler_uses_ensd=ancestral), "Version": "animegen 0.1.0"}
    parsed = parse_infotext(format_infotext("1girl", "", params))
    assert {k: parsed[k] for k in ("RNG", "ENSD") if k in parsed} == written
    assert parse_noise_fields(parsed) == (rng, ensd if ancestral else 0)


@pytest.mark.parametrize("fields, name", [("RNG: TPU", "RNG"), ("ENSD: lots", "ENSD"),
                                          ("Eta noise seed delta: 1.5", "Eta noise seed delta")])
def test_unknown_values_are_refused_naming_the_field(fields, name):
    with pytest.raises(AnimegenError, match=f"^infotext {name}: "):
        request_from_infotext(f"1girl\n{BASE}, {fields}")


def test_the_request_default_and_its_checks():
    request = GenerationRequest(prompt="1girl")
    assert (request.rng, request.eta_noise_seed_delta) == (DEFAULT_RNG, 0) == ("GPU", 0)
    assert resolve(GenerationRequest(prompt="x", rng="nv"), 512).rng == "NV"
    with pytest.raises(ValueError, match="^rng .*GPU.*CPU.*NV"):
        GenerationRequest(prompt="x", rng="TPU").validate()
    with pytest.raises(ValueError, match="^eta_noise_seed_delta "):
        GenerationRequest(prompt="x", eta_noise_seed_delta=1.5).validate()


def test_the_cli_flags_reach_the_request(tmp_path, monkeypatch):
    import animegen.generate
    from animegen.cli.main import app

    seen = []

    class Recording:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, request, **kwargs):
            seen.append(request)
            return []

    monkeypatch.setitem(vars(animegen.generate), "Generator", Recording)  # what the command imports, unloaded
    runner = CliRunner()
    r = runner.invoke(app, ["generate", "1girl", "--model", "test/unused", "--out", str(tmp_path),
                            "--rng", "NV", "--eta-noise-seed-delta", "31337"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["generate", "1girl", "--model", "test/unused", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["generate", "1girl", "--model", "test/unused", "--out", str(tmp_path), "--rng", "TPU"])
    assert r.exit_code == 2 and "rng" in r.output and "Traceback" not in r.output
    assert [(q.rng, q.eta_noise_seed_delta) for q in seen] == [("NV", 31337), ("GPU", 0)]


class _Recording:
    """The model worker stand-in: records the requests it is handed, returns no images."""

    default_size = 512

    def __init__(self):
        self.loaded, self.requests = None, []

    def load(self, entry):
        self.loaded = entry

    def generate(self, request, progress, interrupt):
        from animegen.serve.service import GenerationResult

        self.requests.append(request)
        return GenerationResult([], self.loaded.name, None)


def test_the_api_takes_rng_and_ensd_like_a1111_and_by_name(tmp_path):
    from animegen.serve.app import create_app
    from animegen.serve.config import ServeConfig

    backend = _Recording()
    (tmp_path / "model").mkdir()  # the stand-in backend never opens it
    app = create_app(ServeConfig(model=str(tmp_path / "model"), ui=False), backend=backend)
    body = {"prompt": "1girl", "steps": 1, "width": 64, "height": 64}
    with TestClient(app) as client:
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
        assert client.post("/sdapi/v1/txt2img", json={**body, "rng": "NV", "eta_noise_seed_delta": 31337}).status_code == 200
        a1111 = {"override_settings": {"randn_source": "CPU", "eta_noise_seed_delta": 5}}
        assert client.post("/sdapi/v1/txt2img", json={**body, **a1111}).status_code == 200
        assert client.post("/sdapi/v1/options", json={"randn_source": "NV", "eta_noise_seed_delta": 7}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["randn_source"] == "NV"
        assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
        bad = client.post("/sdapi/v1/txt2img", json={**body, "rng": "TPU"})
        assert bad.status_code == 422 and any("rng" in e["loc"] for e in bad.json()["detail"])
        bad = client.post("/sdapi/v1/options", json={"randn_source": "TPU"})
        assert bad.status_code == 422 and any("randn_source" in e["loc"] for e in bad.json()["detail"])
    assert [(q.rng, q.eta_noise_seed_delta) for q in backend.requests] == [
        ("GPU", 0), ("NV", 31337), ("CPU", 5), ("NV", 7)]
