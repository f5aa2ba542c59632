"""`python -m services.asr`: the ASR service alone (as its container runs it)."""

import sys

from services.kit.server import run

from .service import create_service
from .settings import ASRSettings

if __name__ == "__main__":
    settings = ASRSettings()
    sys.exit(run(lambda: [create_service(settings)], settings))
