"""`python -m services.vit`: the TF Serving-compatible server alone (REST :8501, gRPC :8500)."""

import sys

from services.kit.server import run

from .server import create_service
from .settings import ViTSettings

if __name__ == "__main__":
    settings = ViTSettings()
    sys.exit(run(lambda: [create_service(settings)], settings))
