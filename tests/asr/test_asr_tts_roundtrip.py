"""Text -> TTS service -> speech -> ASR service -> text, both on one real server, over the official openai SDK.

Meaningful only with real weights on both sides: the TTS test models are random (their "speech" is noise that
Whisper cannot read), so this test is skipped unless TTS_MODEL names a real SpeechT5 checkpoint (a local
directory or a Hub id in the local cache), with TTS_VOCODER and TTS_VOICES_DIR beside it, e.g.

    TTS_MODEL=/models/speecht5_tts TTS_VOCODER=/models/speecht5_hifigan TTS_VOICES_DIR=/models/voices \\
        pytest -m realmodels tests/asr/test_asr_tts_roundtrip.py

and the real whisper-base of `make real-asr` transcribes what it says.
"""

import os
import re
from pathlib import Path

import httpx
import openai
import pytest

from services.asr.service import create_service as create_asr
from services.asr.settings import ASRSettings
from services.kit.testing import ServerThread
from services.tts.service import create_service as create_tts
from services.tts.settings import TTSSettings

REPO = Path(__file__).resolve().parents[2]
REAL_ASR = REPO / "models" / "real"
TINY_TTS = REPO / "models" / "tts"
SENTENCES = [
    "Please remember to close the windows before you leave the office tonight.",
    "The committee will announce its decision at the end of next week.",
    "Reading a good book is one of the best ways to relax.",
]


def real_tts_configured() -> bool:
    model = os.environ.get("TTS_MODEL")
    return bool(model) and not Path(model).resolve().is_relative_to(TINY_TTS.resolve())


pytestmark = [
    pytest.mark.realmodels,
    pytest.mark.skipif(
        not (REAL_ASR / "whisper-base" / "model.safetensors").is_file(),
        reason="real whisper-base is absent: run `make real-asr`",
    ),
    pytest.mark.skipif(
        not real_tts_configured(),
        reason="TTS has only random test weights here: set TTS_MODEL (and TTS_VOCODER, TTS_VOICES_DIR) to a "
        "real SpeechT5 checkpoint to run the round trip",
    ),
]


def words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


@pytest.fixture(scope="module")
def client():
    asr = ASRSettings(
        model=str(REAL_ASR / "whisper-base"),
        assistant_model=str(REAL_ASR / "whisper-base-assistant-2l"),
        threads=1,
        log_level="warning",
    )
    tts = TTSSettings(threads=1)  # TTS_* from the environment
    with ServerThread(lambda: [create_asr(asr), create_tts(tts)], asr) as server:
        voices = httpx.get(server.rest_url + "/v1/voices").json()["data"]
        default = next(v["id"] for v in voices if v["default"])
        yield (
            openai.OpenAI(base_url=server.rest_url + "/v1", api_key="unused", max_retries=0, timeout=300),
            default,
        )


@pytest.mark.parametrize("sentence", SENTENCES)
def test_what_tts_says_asr_hears(client, sentence):
    client, voice = client
    speech = client.audio.speech.create(model="tts-1", voice=voice, input=sentence, response_format="wav")
    heard = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", speech.content), language="en"
    )
    said, got = words(sentence), words(heard.text)
    missing = [w for w in said if w not in got]
    assert len(missing) <= 0.2 * len(said), f"said {sentence!r}, heard {heard.text!r}"
