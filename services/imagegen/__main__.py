"""`python -m services.imagegen`: the image generation service alone (as its container runs it)."""

import sys

from services.kit.server import run

from .service import create_service
from .settings import ImageGenSettings

if __name__ == "__main__":
    settings = ImageGenSettings()
    sys.exit(run(lambda: [create_service(settings)], settings))
