"""Every panel of /playground, in headless Chromium, against the platform on the tiny models: each performs its
call through the page and shows its result, with no console errors; a screenshot of each panel is saved under
test-artifacts/playground/."""

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from loadtests.platform import LocalPlatform
from tests.playground.browser import WAIT_S, console_errors, fill, open_playground, screenshot


@pytest.fixture(scope="module")
def platform(browser, models_dir, tmp_path_factory):
    # Asks for the browser first: where Chromium is missing the tests skip before the platform starts.
    log = tmp_path_factory.mktemp("platform") / "platform.log"
    local = LocalPlatform(
        log_path=log,
        extra_env={
            # Warm-up off: it only makes the first requests faster, and start-up time is test time.
            "PLATFORM_WARMUP": "false",
            "VIT_WARMUP": "false",
            # Random-weight Whisper decodes to its cap: a short one keeps the page's two ASR calls short.
            "ASR_MAX_NEW_TOKENS": "10",
        },
    )
    # The ViT server runs on a free port here, not TF Serving's 8501: the platform tells the page where.
    local.extra_env["PLATFORM_PLAYGROUND_TF_SERVING_URL"] = local.vit_url
    with local:
        yield local


@pytest.fixture(scope="module")
def page(browser, platform):
    open_playground(browser, platform.rest_url)
    wait(browser).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    return browser


@pytest.fixture(autouse=True)
def no_console_errors(page):
    yield
    assert console_errors(page) == []


def wait(driver) -> WebDriverWait:
    return WebDriverWait(driver, WAIT_S)


def wait_for(driver, panel: str, condition) -> None:
    """Waits for `condition`; a timeout says what the panel showed by then."""
    try:
        wait(driver).until(condition)
    except TimeoutException:
        shown = driver.find_element(By.ID, f"panel-{panel}").text
        raise AssertionError(f"{panel} panel, still waiting after {WAIT_S} s, shows:\n{shown}") from None


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def panel_status(driver, panel: str) -> str:
    """The panel's status line, failing at once with the panel's error message if it shows one."""
    error = driver.find_element(By.CSS_SELECTOR, f"#panel-{panel} .error").text
    assert not error, f"{panel} panel shows an error: {error}"
    return driver.find_element(By.CSS_SELECTOR, f"#panel-{panel} .status").text


def audio_duration(driver, element_id: str) -> float:
    """The audio element's length in seconds once known; 0 before, and for a stream of unknown length."""
    return driver.execute_script(
        "const a = document.getElementById(arguments[0]);"
        "return a.readyState >= 1 && Number.isFinite(a.duration) ? a.duration : 0;",
        element_id,
    )


def test_speech_recognition_streams_a_transcript_and_times_its_words(page, inputs):
    page.find_element(By.ID, "asr-file").send_keys(str(inputs["speech"]))
    page.find_element(By.ID, "asr-run").click()
    wait_for(page, "asr", lambda d: "timed words" in panel_status(d, "asr"))
    status = panel_status(page, "asr")
    assert "decoding path: assisted" in status  # a lone request takes the assistant
    assert text_of(page, "asr-transcript").strip()
    assert audio_duration(page, "asr-audio") > 0
    screenshot(page, "asr")


def test_speech_synthesis_plays_streamed_speech_and_converts_a_clip(page, inputs):
    voices = Select(page.find_element(By.ID, "tts-voice"))
    assert any("alias of" in option.text for option in voices.options)  # OpenAI names show their voice
    page.find_element(By.ID, "tts-run").click()
    wait_for(page, "tts", lambda d: audio_duration(d, "tts-audio") > 0)
    assert "first audio after" in panel_status(page, "tts")
    assert page.find_element(By.ID, "tts-download").get_attribute("href").startswith("blob:")

    page.find_element(By.ID, "vc-file").send_keys(str(inputs["speech"]))
    page.find_element(By.ID, "vc-run").click()
    wait_for(page, "tts", lambda d: audio_duration(d, "vc-audio") > 0)
    assert panel_status(page, "tts").startswith("converted to")
    screenshot(page, "tts")


def test_translation_shows_translations_and_alternatives(page):
    pairs = [
        option.get_attribute("value")
        for option in Select(page.find_element(By.ID, "translation-pair")).options
    ]
    assert {"en-de", "de-en", "en-ru", "ru-en"} <= set(pairs)
    # Random weights decode to the cap: a short one keeps four beams times two alternatives quick.
    fill(page, "translation-max-tokens", "16")
    page.find_element(By.ID, "translation-run").click()
    wait_for(page, "translation", lambda d: "wmt19-en-de" in panel_status(d, "translation"))
    alternatives = page.find_elements(By.CSS_SELECTOR, "#translation-out ul li")
    assert len(alternatives) == 2  # num_return_sequences=2
    screenshot(page, "translation")


def test_image_generation_shows_previews_then_the_image_and_inpaints(page, inputs):
    page.find_element(By.ID, "imagegen-run").click()
    wait_for(page, "imagegen", lambda d: "done in" in panel_status(d, "imagegen"))
    assert page.find_element(By.ID, "imagegen-preview").get_attribute("data-previews") == "2"
    assert page.execute_script("return document.getElementById('imagegen-result').naturalWidth") > 0

    Select(page.find_element(By.ID, "imagegen-mode")).select_by_value("inpaint")
    page.find_element(By.ID, "imagegen-file").send_keys(str(inputs["picture"]))
    page.find_element(By.ID, "imagegen-mask-center").click()
    page.execute_script("document.getElementById('imagegen-result').removeAttribute('src')")
    page.find_element(By.ID, "imagegen-run").click()
    wait_for(
        page,
        "imagegen",
        lambda d: (
            "done in" in panel_status(d, "imagegen")
            and d.execute_script("return document.getElementById('imagegen-result').naturalWidth") > 0
        ),
    )
    screenshot(page, "imagegen")


def test_vision_shows_the_top_five_labels(page, inputs):
    page.find_element(By.ID, "vit-file").send_keys(str(inputs["picture"]))
    wait_for(page, "vit", lambda d: len(d.find_elements(By.CSS_SELECTOR, "#vit-labels li")) == 5)
    labels = [
        item.find_element(By.CLASS_NAME, "label").text
        for item in page.find_elements(By.CSS_SELECTOR, "#vit-labels li")
    ]
    assert all(labels) and len(set(labels)) == 5
    assert "hf-vit" in panel_status(page, "vit")
    screenshot(page, "vit")


def test_speech_to_speech_chains_a_recording_through_three_calls(page):
    record = page.find_element(By.ID, "s2s-record")
    record.click()
    # The fake microphone's beeps, recorded until a second of them is in.
    wait_for(
        page,
        "s2s",
        lambda d: record.get_attribute("aria-pressed") == "true" and seconds_recorded(record) >= 1.0,
    )
    record.click()
    wait_for(page, "s2s", lambda d: "recording.wav: ready" in panel_status(d, "s2s"))
    # Random weights translate into long gibberish: a short translation keeps the speech short.
    fill(page, "s2s-max-tokens", "8")
    page.find_element(By.ID, "s2s-run").click()
    wait_for(page, "s2s", lambda d: audio_duration(d, "s2s-audio") > 0)
    assert panel_status(page, "s2s").startswith("done in")
    assert text_of(page, "s2s-transcript").strip() and text_of(page, "s2s-translation").strip()
    screenshot(page, "s2s")


def seconds_recorded(button) -> float:
    text = button.text  # "Stop (1.3 s)" while recording
    return float(text.split("(")[1].split(" ")[0]) if "(" in text else 0.0
