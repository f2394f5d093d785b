"""The page driven in a real browser: Debian's headless Chromium through Playwright's Python
API (Playwright's own browser download is never used). Skipped, with the reason printed, where
either is missing."""

import os
import shutil
from pathlib import Path

import pytest

from halluscope.data import ImageWorld

CHROMIUM = os.environ.get("HALLUSCOPE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*no_silent_downcasting",
                                                              "ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set HALLUSCOPE_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_sample_sweep_and_see_the_results(browser, tmp_path):
    from app_user import app_as_user  # started as the README says: default cache, another directory
    from test_app import make_model  # the same tiny models as the API tests

    make_model(tmp_path / "models", "image")
    image = tmp_path / "world.png"
    ImageWorld(size=32).write(ImageWorld(size=32).example(3)[0], image)
    with app_as_user(tmp_path / "models", tmp_path) as (url, _, _):
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            page.goto(url, wait_until="networkidle")
            assert "halluscope" in page.title()
            page.locator("#upload input[type=file]").set_input_files(str(image))
            page.locator("#upload").get_by_text("world.png").wait_for(timeout=60_000)
            page.locator("#sample").click()
            thumbnails = page.locator("#gallery img")
            thumbnails.first.wait_for(timeout=60_000)
            page.wait_for_function("document.querySelectorAll('#gallery img').length >= 4", timeout=20_000)
            page.locator("#sweep").click()
            page.locator("#plot img").wait_for(timeout=60_000)
            assert page.locator(".toast-body.error").count() == 0  # no error message on the page
        finally:  # also on a failure: the picture shows what the page did
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            page.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'app.png'}")
