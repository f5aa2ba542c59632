"""The playground's switches and doors: it asks for the API key on a 401 and works with it, it is off (404) with
PLATFORM_PLAYGROUND=false or a service's own <P>PLAYGROUND=false, and browsers may call the API from pages of
this server's own host (the platform's page calling the ViT server) but not from other sites.

The servers here are the platform's server in this process (`serve` with PlatformSettings, as `python -m services`
runs it) with one light service: what is checked is the kit's page and doors, not the models."""

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from services.asr.settings import ASRSettings
from services.kit.auth import KEYS_ENV
from services.kit.config import PlatformSettings
from services.kit.testing import ServerThread, free_port
from services.translation.service import create_service as create_translation
from services.translation.settings import WMT19_PAIRS, TranslationSettings
from tests.kit.echo_service import create_service as create_echo
from tests.playground.browser import WAIT_S, fill, open_playground, screenshot

API_KEY = "playground-key-5c1e"


@pytest.fixture(scope="module")
def keyed_server(models_dir):
    """The platform serving translation alone, with API keys on."""
    pairs = {pair: str(models_dir / "translation" / f"wmt19-{pair}") for pair in WMT19_PAIRS}
    translation = TranslationSettings(models=pairs, warmup=False, log_level="warning")
    # No ViT here: its panel is pointed at a closed port (not at whatever TF Serving :8501 holds on this machine).
    settings = PlatformSettings(
        warmup=False, log_level="warning", playground_tf_serving_url=f"http://127.0.0.1:{free_port()}"
    )
    server = ServerThread(lambda: [create_translation(translation)], settings)
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(KEYS_ENV, API_KEY)  # read once, as the server starts
        server.start()
    try:
        yield server
    finally:
        server.stop()


def test_page_asks_for_the_key_on_401_and_then_works(keyed_server, browser):
    # The page itself needs no key: it holds nothing secret and asks for one when the API wants it.
    assert httpx.get(f"{keyed_server.rest_url}/playground", timeout=30).status_code == 200
    open_playground(browser, keyed_server.rest_url)
    wait = WebDriverWait(browser, WAIT_S)
    dialog = browser.find_element(By.ID, "key-dialog")
    wait.until(lambda d: dialog.is_displayed())
    assert browser.find_element(By.ID, "key-dialog-reason").text == (
        "401: missing API key: send 'Authorization: Bearer <key>'"
    )
    browser.find_element(By.ID, "key-input").send_keys(API_KEY)
    browser.find_element(By.ID, "key-save").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#translation-pair option"))
    fill(browser, "translation-max-tokens", "16")  # random weights decode to the cap: a short one is quick
    browser.find_element(By.ID, "translation-run").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#translation-out li"))
    # Kept for this tab only, and never put in a URL.
    assert browser.execute_script("return sessionStorage.getItem('modelserve.apiKey')") == API_KEY
    assert API_KEY not in browser.current_url
    # Panels of services this server does not have say so.
    assert "not served here" in browser.find_element(By.CSS_SELECTOR, "#panel-asr .unavailable").text
    screenshot(browser, "translation", name="translation-with-api-key")


def test_api_errors_show_the_servers_message(keyed_server, browser):
    open_playground(browser, keyed_server.rest_url, api_key=API_KEY)
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    fill(browser, "translation-beams", "1000")
    browser.find_element(By.ID, "translation-run").click()
    error = browser.find_element(By.CSS_SELECTOR, "#panel-translation .error")
    wait.until(lambda d: error.text)
    assert error.text.startswith("400: num_beams: 1000 exceeds the limit")


def test_cross_origin_calls_only_from_this_hosts_pages(keyed_server):
    url = f"{keyed_server.rest_url}/v1/models"
    preflight = {"access-control-request-method": "GET", "access-control-request-headers": "authorization"}
    same_host = httpx.options(url, headers={**preflight, "origin": "http://127.0.0.1:1"}, timeout=30)
    assert same_host.status_code == 200
    assert same_host.headers["access-control-allow-origin"] in ("*", "http://127.0.0.1:1")
    elsewhere = httpx.options(url, headers={**preflight, "origin": "http://example.com"}, timeout=30)
    assert "access-control-allow-origin" not in elsewhere.headers


def test_playground_off_is_404(monkeypatch):
    monkeypatch.setenv("PLATFORM_PLAYGROUND", "false")
    with ServerThread(lambda: [create_echo()], PlatformSettings(log_level="warning")) as local:
        for path in ("/playground", "/playground/app.js", "/playground/config.json"):
            assert httpx.get(local.rest_url + path, timeout=30).status_code == 404, path
        origin = {"origin": "http://127.0.0.1:1"}
        assert (
            "access-control-allow-origin"
            not in httpx.get(local.rest_url + "/v1/models", headers=origin).headers
        )


def test_each_service_has_its_own_switch(monkeypatch):
    monkeypatch.setenv("ASR_PLAYGROUND", "false")
    assert ASRSettings().playground is False
    assert TranslationSettings().playground is True
