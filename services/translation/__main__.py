"""`python -m services.translation`: the translation service alone (as its container runs it)."""

import sys

from services.kit.server import run

from .service import create_service
from .settings import TranslationSettings

if __name__ == "__main__":
    settings = TranslationSettings()
    sys.exit(run(lambda: [create_service(settings)], settings))
