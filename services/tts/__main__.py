"""`python -m services.tts`: the TTS service alone (as its container runs it)."""

import sys

from services.kit.server import run

from .service import create_service
from .settings import TTSSettings

if __name__ == "__main__":
    settings = TTSSettings()
    sys.exit(run(lambda: [create_service(settings)], settings))
