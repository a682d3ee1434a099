"""The Gradio web UI driven by Debian's Chromium through Playwright (scripts/install-browser.sh installs it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from animegen.serve.app import create_app
from animegen.serve.config import ServeConfig

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} not installed (run scripts/install-browser.sh)"),
]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(value)
    box.press("Enter")
    box.blur()


def _screens(tmp_path) -> Path:
    """Where screenshots go: $ANIMEGEN_SCREENSHOT_DIR (for a person to look at), else the test's tmp folder."""
    folder = Path(os.environ.get("ANIMEGEN_SCREENSHOT_DIR") or tmp_path / "screens")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _box(page, selector: str) -> dict:
    return page.locator(selector).first.bounding_box()


def test_generate_in_the_browser_and_read_png_info(serve_dirs, server_runner, tmp_path, capfd):
    playwright_api = pytest.importorskip("playwright.sync_api")
    expect = playwright_api.expect
    expect.set_options(timeout=90_000)
    # Behind HTTP basic auth, so the UI's own calls (queue, uploads, events) are proven to pass it too.
    config = ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), lora_dir=serve_dirs["loras"],
                         api_auth="artist:pw", outputs_dir=tmp_path / "outputs")
    screens = _screens(tmp_path)
    a1111 = "a cat from a png\nNegative prompt: dog\nSteps: 3, Sampler: Euler, CFG scale: 6, Seed: 42, Size: 64x64"
    png = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(png, pnginfo=info)

    with server_runner(create_app(config)) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            assert browser.new_page().request.get(url + "/").status == 401  # no credentials, no UI
            page = browser.new_context(http_credentials={"username": "artist", "password": "pw"}).new_page()
            page.set_default_timeout(90_000)
            page.set_viewport_size({"width": 1600, "height": 1100})
            page.goto(url + "/")
            # A1111's layout: the settings column beside the output column, not one long column
            settings, results = _box(page, "#txt2img_settings"), _box(page, "#txt2img_results")
            assert results["x"] >= settings["x"] + settings["width"] - 1
            assert results["y"] < settings["y"] + settings["height"] and settings["y"] < results["y"] + 100
            # the empty gallery is an output, not an upload box
            assert "upload" not in page.locator("#txt2img_gallery").inner_text().lower()
            page.screenshot(path=str(screens / "txt2img-empty.png"), full_page=True)
            for button in ("generate", "interrupt", "skip"):
                assert page.locator(f"#txt2img_{button}").count() == 1
            page.locator("#txt2img_prompt textarea").fill("1girl, browser test")
            _set_number(page, "txt2img_width", "64")
            _set_number(page, "txt2img_height", "64")
            _set_number(page, "txt2img_steps", "2")
            page.locator("#txt2img_seed input").fill("77")
            page.locator("#txt2img_seed input").blur()
            page.locator("#txt2img_generate").click()
            page.locator("#txt2img_gallery img").first.wait_for(state="visible")
            infotext = page.locator("#txt2img_infotext textarea")
            expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile(re.escape("Seed: 77")))
            text = infotext.input_value()
            assert text.startswith("1girl, browser test")
            assert re.search(r"Steps: 2, .*Seed: 77, Size: 64x64", text)

            assert list((tmp_path / "outputs" / "txt2img-images").glob("*/00000-77.png"))  # saved, A1111's layout
            page.screenshot(path=str(screens / "txt2img-generated.png"), full_page=True)

            page.locator("#txt2img_send_to_img2img").click()  # the image and every setting go to img2img
            expect(page.locator("#img2img_prompt textarea")).to_have_value("1girl, browser test")
            page.locator("#img2img_image img").first.wait_for(state="visible")
            for elem_id, value in (("img2img_width", "64"), ("img2img_height", "64"), ("img2img_steps", "2")):
                expect(page.locator(f"#{elem_id} input[type=number]").first).to_have_value(value)
            expect(page.locator("#img2img_seed input").first).to_have_value("77")
            for button in ("generate", "interrupt", "skip"):
                assert page.locator(f"#img2img_{button}").count() == 1
            page.locator("#img2img_generate").click()
            expect(page.locator("#img2img_infotext textarea")).to_have_value(re.compile(r"Denoising strength: "))
            assert list((tmp_path / "outputs" / "img2img-images").glob("*/00000-77.png"))
            page.screenshot(path=str(screens / "img2img-generated.png"), full_page=True)

            page.get_by_role("tab", name="PNG Info").click()
            page.locator("#pnginfo_file input[type=file]").set_input_files(str(png))
            expect(page.locator("#pnginfo_text textarea")).to_have_value(re.compile(re.escape("Seed: 42")))
            assert page.locator("#pnginfo_text textarea").input_value() == a1111
            page.screenshot(path=str(screens / "pnginfo.png"), full_page=True)
            page.locator("#pnginfo_send_to_txt2img").click()
            expect(page.locator("#txt2img_prompt textarea")).to_have_value("a cat from a png")
            assert page.locator("#txt2img_neg_prompt textarea").input_value() == "dog"

            page.get_by_role("tab", name="PNG Info").click()
            page.locator("#pnginfo_rerun").click()  # same parameters, generated again
            expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile(re.escape("Seed: 42")))
            rerun = page.locator("#txt2img_infotext textarea").input_value()
            assert rerun.startswith("a cat from a png\nNegative prompt: dog\nSteps: 3, Sampler: Euler, "
                                    "Schedule type: Automatic, CFG scale: 6")  # A1111 1.10 writes the schedule

            page.get_by_role("tab", name="txt2img").click()
            capfd.readouterr()
            page.locator("#txt2img_add_lora").click()  # a user error: a pop-up, no traceback in the server log
            expect(page.get_by_text("pick a LoRA first").first).to_be_visible()
            assert "Traceback" not in "".join(capfd.readouterr())

            # inpainting: upload an init image and a mask (white = inpaint) into A1111's inpaint settings
            init, mask = tmp_path / "init.png", tmp_path / "mask.png"
            Image.new("RGB", (64, 64), (200, 40, 40)).save(init)
            white_box = Image.new("L", (64, 64))
            white_box.paste(255, (24, 24, 40, 40))
            white_box.save(mask)
            page.goto(url + "/")  # a fresh form: an empty upload box
            page.get_by_role("tab", name="img2img").click()
            page.locator("#img2img_image input[type=file]").set_input_files(str(init))
            page.locator("#img2img_image img").first.wait_for(state="visible")
            page.locator("#img2img_prompt textarea").fill("1girl, inpainted")
            for elem_id, value in (("img2img_width", "64"), ("img2img_height", "64"), ("img2img_steps", "2"),
                                   ("img2img_seed", "78")):
                _set_number(page, elem_id, value)
            page.get_by_text("Inpaint", exact=True).first.click()  # open the accordion
            page.locator("#img2img_mask_upload input[type=file]").set_input_files(str(mask))
            page.locator("#img2img_mask_upload img").first.wait_for(state="visible")
            page.locator("#img2img_inpainting_fill").get_by_text("latent nothing").click()
            page.locator("#img2img_generate").click()
            expect(page.locator("#img2img_infotext textarea")).to_have_value(
                re.compile(r"Mask blur: 4, Masked content: latent nothing"))
            (saved,) = (tmp_path / "outputs" / "img2img-images").glob("*/00001-78.png")
            pixels = Image.open(saved).convert("RGB")
            assert pixels.getpixel((4, 4)) == pixels.getpixel((60, 60)) == (200, 40, 40)  # outside the mask: kept
            assert pixels.getpixel((32, 32)) != (200, 40, 40)  # under it: generated
            page.screenshot(path=str(screens / "img2img-inpainted.png"), full_page=True)
        finally:
            browser.close()
