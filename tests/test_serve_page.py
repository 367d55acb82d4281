"""The page at / of dlm serve, driven in headless Chromium: typing a prompt shows the canvas denoising and
ends with the answer. Needs Debian's chromium and chromium-driver (.ci/run installs them)."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi", reason="dlm serve needs the [serve] extra: pip install -e '.[test,serve]'")

from dlm import Pipeline  # noqa: E402
from dlm.config import default_config_path  # noqa: E402
from dlm.tools.serve.app import create_app  # noqa: E402
from dlm.tools.serve.server import ServerThread  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Chromium and its driver: apt-get install chromium chromium-driver (as .ci/run does)",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))  # the system driver: no download
    try:
        yield driver
    finally:
        driver.quit()


def test_page_shows_the_canvas_denoising_and_the_final_text(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pipe = Pipeline.from_yaml(default_config_path())
    expected = pipe.generate(["rev:abcd="])
    with ServerThread(create_app(pipe)) as server:
        browser.get(f"{server.url}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "model").text == "dlm-demo")
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("rev:abcd=")
        browser.find_element(By.ID, "run").click()
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") != "running")
        assert browser.find_element(By.ID, "status").get_attribute("data-state") == "done"
        assert browser.find_element(By.ID, "text").text == expected.texts[0] == "dcba"
        cells = browser.find_elements(By.CSS_SELECTOR, "#canvas .cell")
        assert len(cells) == 8 and not browser.find_elements(By.CSS_SELECTOR, "#canvas .mask")
        assert browser.find_element(By.ID, "nfe").text == str(expected.nfe[0])
        steps = {c.get_attribute("title").rsplit(" ", 1)[-1] for c in cells}
        assert len(steps) == expected.nfe[0]  # one token per step: every cell coloured by a different step
