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


def test_page_shows_a_revisable_canvas_provisional_until_committed(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dlm.testing import make_diffusion_gemma_checkpoint
    from dlm.tools.serve.view import changes, row_canvases

    ckpt = make_diffusion_gemma_checkpoint(tmp_path / "dg", seed=5, generation={"max_denoising_steps": 4})
    pipe = Pipeline.from_config({
        "model": {"name": "diffusion_gemma", "path": str(ckpt)}, "iteration": {"name": "canvases", "gen_length": 16},
        "decoding": {"name": "entropy_bound", "entropy_bound": 1.0}, "cache": {"name": "none"},
        "dtype": "float32", "device": "cpu"})
    seen = {"before": None, "revisions": 0}

    def count(state):
        (now,) = row_canvases(state)
        seen["revisions"] += len(changes(now, seen["before"], state.mask_id)[1])
        seen["before"] = now

    expected = pipe.generate(["12+3="], trace=count)
    assert seen["revisions"] > 0
    with ServerThread(create_app(pipe)) as server:
        browser.get(f"{server.url}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "model").text != "…")
        browser.execute_script("""window.sawProvisional = false;
            new MutationObserver(() => { if (document.querySelector('#canvas .provisional.revised'))
              window.sawProvisional = true; }).observe(document.getElementById('canvas'), {childList: true});""")
        for field, value in (("prompt", "12+3="), ("max_tokens", "16")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "run").click()
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") != "running")
        assert browser.find_element(By.ID, "status").get_attribute("data-state") == "done"
        assert browser.find_element(By.ID, "text").text == expected.texts[0].strip()
        assert browser.execute_script("return window.sawProvisional")  # revised provisional cells were drawn
        assert browser.find_element(By.ID, "revised").text == str(seen["revisions"])
        assert not browser.find_elements(By.CSS_SELECTOR, "#canvas .provisional")  # all committed at the end
        assert len(browser.find_elements(By.CSS_SELECTOR, "#canvas .cell")) == 16
