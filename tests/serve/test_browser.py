"""The Gradio web UI driven by Debian's Chromium through Playwright (scripts/install-browser.sh installs it)."""

from __future__ import annotations

import os
import re

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


def test_generate_in_the_browser_and_read_png_info(serve_dirs, server_runner, tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    expect = playwright_api.expect
    expect.set_options(timeout=90_000)
    # Behind HTTP basic auth, so the UI's own calls (queue, uploads, events) are proven to pass it too.
    config = ServeConfig(model=str(serve_dirs["models"] / "tiny-a"), lora_dir=serve_dirs["loras"],
                         api_auth="artist:pw")
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
            page.goto(url + "/")
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

            page.locator("#txt2img_send_to_img2img").click()  # image + prompt go to the img2img tab
            expect(page.locator("#img2img_prompt textarea")).to_have_value("1girl, browser test")
            page.locator("#img2img_init img").first.wait_for(state="visible")

            page.get_by_role("tab", name="PNG Info").click()
            page.locator("#pnginfo_file input[type=file]").set_input_files(str(png))
            expect(page.locator("#pnginfo_text textarea")).to_have_value(re.compile(re.escape("Seed: 42")))
            assert page.locator("#pnginfo_text textarea").input_value() == a1111
            page.locator("#pnginfo_send_to_txt2img").click()
            expect(page.locator("#txt2img_prompt textarea")).to_have_value("a cat from a png")
            assert page.locator("#txt2img_negative textarea").input_value() == "dog"

            page.get_by_role("tab", name="PNG Info").click()
            page.locator("#pnginfo_rerun").click()  # same parameters, generated again
            expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile(re.escape("Seed: 42")))
            rerun = page.locator("#txt2img_infotext textarea").input_value()
            assert rerun.startswith("a cat from a png\nNegative prompt: dog\nSteps: 3, Sampler: Euler, "
                                    "Schedule type: Automatic, CFG scale: 6")  # A1111 1.10 writes the schedule
        finally:
            browser.close()
