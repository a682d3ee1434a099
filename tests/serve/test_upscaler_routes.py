"""Model upscalers through the server (issue #15): `/sdapi/v1/upscalers` lists them with A1111's fields
(`get_upscalers`: name, model_name, model_path, model_url, scale), the Extras routes run them as `upscaler_1` /
`upscaler_2`, `hr_upscaler` names them, and only listed names (never paths, never pickles) are accepted.

The upscalers are tiny random RRDBNets saved as .safetensors; the Extras result is compared with
`models.upscalers.upscale_image` (tested against reference forwards in tests/models/test_upscalers.py) on the
same image, which is A1111's `Upscaler.upscale` for a model.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from animegen.models.upscalers import upscale_image
from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig

torch.set_num_threads(1)



@pytest.fixture(scope="module")
def dirs(tmp_path_factory, save_tiny_upscaler):
    root, save_rrdb = tmp_path_factory.mktemp("upscaler-routes"), save_tiny_upscaler
    models, extra = root / "models", root / "upscalers"
    models.mkdir()
    save_file({"w": torch.zeros(2, 2)}, str(models / "ckpt.safetensors"))
    save_rrdb(models / "ESRGAN" / "4x-tiny.safetensors")
    save_rrdb(models / "ESRGAN" / "old.pth", seed=1)
    save_rrdb(models / "realesrgan" / "2x-real.safetensors", seed=2, upsamples=1)
    save_rrdb(extra / "x8-extra.safetensors", seed=3, upsamples=3)
    (extra / "broken.safetensors").write_bytes(b"not a safetensors file")
    return {"models": models, "extra": extra}


class Recording:
    """A stand-in model worker that records the requests it is handed."""

    default_size = 512

    def __init__(self):
        self.requests = []

    def load(self, entry):
        self.loaded = entry

    def generate(self, request, progress, interrupt):
        from animegen.generate import GeneratedImage
        from animegen.serve.service import GenerationResult

        self.requests.append(request)
        return GenerationResult([GeneratedImage(Image.new("RGB", (8, 8)), 1, "x")], "fake", None)


@pytest.fixture(scope="module")
def backend():
    return Recording()


@pytest.fixture(scope="module")
def client(dirs, backend):
    config = ServeConfig(model="start-model", model_dir=dirs["models"], upscaler_dir=dirs["extra"], ui=False)
    with TestClient(create_app(config, backend=backend)) as test_client:
        yield test_client


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_upscalers_lists_the_models_with_their_detected_scale(client, dirs):
    got = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in got] == ["None", "Lanczos", "Nearest", "2x-real", "4x-tiny", "broken", "x8-extra"]
    by_name = {u["name"]: u for u in got}
    assert by_name["4x-tiny"] == {"name": "4x-tiny", "model_name": "ESRGAN", "model_url": None, "scale": 4,
                                  "model_path": str((dirs["models"] / "ESRGAN" / "4x-tiny.safetensors").resolve())}
    assert (by_name["2x-real"]["model_name"], by_name["2x-real"]["scale"]) == ("RealESRGAN", 2)
    assert by_name["x8-extra"]["scale"] == 8 and by_name["broken"]["scale"] is None  # unreadable: no scale
    assert by_name["Lanczos"]["scale"] == 4 and by_name["Lanczos"]["model_name"] is None
    names = [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert not any("tiny" in n or "real" in n for n in names)  # upscaler folders hold no checkpoints


@pytest.mark.parametrize("name, file, by", [("4x-tiny", "models/ESRGAN/4x-tiny.safetensors", 2.0),
                                            ("2x-real", "models/realesrgan/2x-real.safetensors", 3.0)])
def test_extra_single_image_with_a_model_is_upscale_image(client, dirs, name, file, by):
    source = noise(20, 12)
    response = client.post("/sdapi/v1/extra-single-image",
                           json={"image": b64(source), "upscaler_1": name, "upscaling_resize": by})
    assert response.status_code == 200, response.text
    result = decode(response.json()["image"])
    want = upscale_image(source, dirs["models"].parent / file, by)
    assert result.size == want.size and result.tobytes() == want.tobytes()
    assert result.info["postprocessing"] == f"Postprocess upscale by: {by}, Postprocess upscaler: {name}"
    lanczos = decode(client.post("/sdapi/v1/extra-single-image", json={
        "image": b64(source), "upscaler_1": "Lanczos", "upscaling_resize": by}).json()["image"])
    assert lanczos.tobytes() != want.tobytes()


def test_extra_batch_images_and_upscaler_2_take_models(client, dirs):
    images = [noise(16, 16, seed) for seed in (1, 2)]
    model = dirs["models"] / "ESRGAN" / "4x-tiny.safetensors"
    body = {"imageList": [{"data": b64(im), "name": f"{i}.png"} for i, im in enumerate(images)],
            "upscaler_1": "Lanczos", "upscaler_2": "4x-tiny", "extras_upscaler_2_visibility": 0.4,
            "upscaling_resize": 2}
    response = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert response.status_code == 200, response.text
    for got, image in zip(response.json()["images"], images, strict=True):
        first = image.resize((32, 32), Image.LANCZOS)  # Lanczos by 2 is one resize to the target
        want = Image.blend(first, upscale_image(image, model, 2), 0.4)
        assert decode(got).tobytes() == want.tobytes()


@pytest.mark.parametrize("name", ["old", "R-ESRGAN 4x+", "ESRGAN/4x-tiny.safetensors"])
def test_unlisted_names_are_a_422_naming_the_valid_ones(client, name):
    response = client.post("/sdapi/v1/extra-single-image", json={"image": b64(noise(8, 8)), "upscaler_1": name})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "upscaler_1"] and "None, Lanczos, Nearest, 2x-real, 4x-tiny" in detail["msg"]


def test_hr_upscaler_takes_a_listed_model_and_refuses_the_rest(client, backend):
    body = {"prompt": "1girl", "steps": 2, "width": 64, "height": 64, "enable_hr": True, "hr_scale": 2}
    assert client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "4X-tiny"}).status_code == 200
    assert backend.requests[-1].hires_upscaler == "4x-tiny"
    for bad in ("old", "R-ESRGAN 4x+", "ESRGAN/4x-tiny.safetensors", "/etc/passwd"):
        response = client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": bad})
        assert response.status_code == 422, bad
        detail = response.json()["detail"]
        assert any("hr_upscaler" in e["loc"] and "4x-tiny" in e["msg"] for e in detail), detail


def test_the_generator_gets_the_same_upscaler_folders(dirs, monkeypatch):
    import animegen.generate
    from animegen.serve.catalog import Catalog
    from animegen.serve.service import GeneratorBackend

    seen = {}

    class Loaded:
        model_hash, embeddings = None, None

        def __init__(self, *args, **kwargs):
            seen.update(kwargs)

    monkeypatch.setitem(vars(animegen.generate), "Generator", Loaded)
    config = ServeConfig(model="start-model", model_dir=dirs["models"], upscaler_dir=dirs["extra"], ui=False)
    catalog = Catalog(config.model, config.model_dir, config.lora_dir, config.upscaler_dir)
    GeneratorBackend(config, catalog).load(catalog.start_entry)
    assert seen["upscaler_dir"] == [dirs["models"] / "ESRGAN", dirs["models"] / "realesrgan", dirs["extra"]]
    assert seen["allow_pickle"] is False


def test_cmd_flags_and_the_cli_flag(client, dirs, tmp_path):
    from animegen.cli.main import app

    assert client.get("/sdapi/v1/cmd-flags").json()["esrgan_models_path"] == str(dirs["extra"])
    r = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--upscaler-dir", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "--upscaler-dir" in r.output and "no such folder" in r.output


def test_the_ui_hires_upscaler_list_has_the_models(dirs):
    pytest.importorskip("gradio")
    from animegen.generate.hires import HIRES_UPSCALERS
    from animegen.serve.service import ServeService
    from animegen.serve.ui import build_parts

    config = ServeConfig(model="start-model", model_dir=dirs["models"], upscaler_dir=dirs["extra"])
    service = ServeService(config, backend=Recording())
    try:
        dropdown = build_parts(service).txt2img["hires_upscaler"]
    finally:
        service.close()
    assert [value for _, value in dropdown.choices] == [*HIRES_UPSCALERS, "2x-real", "4x-tiny", "broken", "x8-extra"]
