"""Headless Chromium for the playground tests: Debian's chromium + chromium-driver driven by selenium
(`make browser` installs them), with a fake microphone; tests skip, saying why, where they are missing."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "playground"
# Generous: the whole suite must pass with both cores busy.
WAIT_S = 120
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Where the page keeps the API key it was given (services/kit/playground/static/api.js).
API_KEY_STORAGE = "modelserve.apiKey"


def start_browser():
    """A headless Chromium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (`make setup`)")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "chromium and chromium-driver are not installed (`make browser` installs them with apt-get)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,1600",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))


def open_playground(driver, server_url: str, api_key: str | None = None) -> None:
    """Opens `server_url`/playground with `api_key` (or none) in this tab's sessionStorage, the console entries
    of earlier pages forgotten: the tests share one browser, and a key left by one test must not reach another."""
    # The page's config.json runs no script: a place on the page's origin to set its storage before it loads.
    driver.get(f"{server_url}/playground/config.json")
    driver.execute_script(
        "arguments[1] ? sessionStorage.setItem(arguments[0], arguments[1]) : sessionStorage.removeItem(arguments[0])",
        API_KEY_STORAGE,
        api_key,
    )
    console_errors(driver)
    driver.get(f"{server_url}/playground")


def fill(driver, element_id: str, text: str) -> None:
    """Replaces what the field with `element_id` holds, as a person typing would."""
    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(text)


def console_errors(driver) -> list[str]:
    """The page's SEVERE console entries since the last call (uncaught errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver, panel: str, name: str | None = None) -> Path:
    """The panel as shown, in test-artifacts/playground/<name or panel>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name or panel}.png"
    element = driver.find_element("id", f"panel-{panel}")
    driver.execute_script("arguments[0].scrollIntoView()", element)
    element.screenshot(str(path))
    return path


def speech_wav(path: Path, seconds: float = 1.5, rate: int = 16000) -> Path:
    """A gliding tone with a little noise: something for Whisper and the voice converter to chew on."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(7)
    samples = 0.3 * np.sin(2 * np.pi * (180 + 120 * t) * t) + 0.02 * rng.standard_normal(t.size)
    soundfile.write(path, samples.astype(np.float32), rate, subtype="PCM_16")
    return path


def picture_png(path: Path, size: int = 64) -> Path:
    """A gradient with a square in it."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    pixels[size // 4 : size // 2, size // 4 : size // 2] = (250, 220, 30)
    Image.fromarray(pixels).save(path)
    return path
