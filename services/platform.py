"""The local all-in-one platform: every service on one REST port and one gRPC port.

Services are discovered: each `services/<name>/service.py` with a `create_service()` joins the
shared servers in this process. The ViT service speaks the TensorFlow Serving protocol on its own
ports and runs TensorFlow, so it starts as a child process (`python -m services.vit`) instead.
"""

import asyncio
import importlib
import logging
import os
import pkgutil
import signal
import subprocess
import sys
from pathlib import Path

import services
from services.kit.config import PlatformSettings
from services.kit.server import configure_logging, serve
from services.kit.service import Service

log = logging.getLogger(__name__)

SEPARATE_PROCESS = ("vit",)


def available_services() -> list[str]:
    names = []
    for module in pkgutil.iter_modules(services.__path__):
        package_dir = Path(services.__path__[0]) / module.name
        if module.ispkg and module.name != "kit":
            if (package_dir / "service.py").exists() or module.name in SEPARATE_PROCESS:
                names.append(module.name)
    return sorted(names)


def selected_services(settings: PlatformSettings) -> list[str]:
    available = available_services()
    if settings.services == "all":
        return available
    wanted = [name.strip() for name in settings.services.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise SystemExit(f"unknown services {unknown}; available: {available}")
    return wanted


def create_services(names: list[str]) -> list[Service]:
    return [importlib.import_module(f"services.{name}.service").create_service() for name in names
            if name not in SEPARATE_PROCESS]


def start_separate(names: list[str]) -> list[subprocess.Popen]:
    children = []
    for name in names:
        if name in SEPARATE_PROCESS and (Path(services.__path__[0]) / name / "__main__.py").exists():
            log.info("starting %s in its own process", name)
            children.append(subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=os.environ.copy()))
    return children


def main() -> int:
    settings = PlatformSettings()
    configure_logging(settings.log_level, settings.log_format)
    names = selected_services(settings)
    log.info("platform services: %s", ", ".join(names))
    children = start_separate(names)
    try:
        in_process = create_services(names)
        if in_process:
            # Each service keeps its own batching knobs; the platform's settings own ports and drain.
            settings.max_body_bytes = max([settings.max_body_bytes, *(s.settings.max_body_bytes for s in in_process)])
            asyncio.run(serve(in_process, settings))
        else:
            for child in children:
                child.wait()
    except RuntimeError:
        log.exception("platform failed")
        return 1
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=settings.shutdown_grace_s + 10)
    return 0
