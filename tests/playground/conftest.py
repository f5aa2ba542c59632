"""What the playground's tests share: one headless Chromium for the whole session (a browser start costs
seconds on a loaded machine) and the page's test inputs."""

import pytest

from tests.playground.browser import picture_png, speech_wav, start_browser


@pytest.fixture(scope="session")
def browser():
    driver = start_browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    return {"speech": speech_wav(folder / "speech.wav"), "picture": picture_png(folder / "picture.png")}
