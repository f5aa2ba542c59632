"""The local all-in-one platform: every service on one REST port and one gRPC port.

Services are discovered (services/registry.py): each `services/<name>/` declaring itself in its
`registry.py` joins the shared servers in this process through its `service.py`'s `create_service()`.
A service marked `separate_process` (ViT: the TensorFlow Serving protocol on its own ports, and
TensorFlow) starts as a child process (`python -m services.<name>`) instead.
"""

import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys

from services.kit.config import PlatformSettings
from services.kit.server import configure_logging, serve
from services.kit.service import Service
from services.registry import entries

log = logging.getLogger(__name__)


def available_services() -> list[str]:
    return list(entries())


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
    registry = entries()
    return [
        importlib.import_module(f"services.{name}.service").create_service()
        for name in names
        if not registry[name].separate_process
    ]


def start_separate(names: list[str]) -> list[subprocess.Popen]:
    registry = entries()
    children = []
    for name in names:
        if registry[name].separate_process:
            log.info("starting %s in its own process", name)
            children.append(
                subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=os.environ.copy())
            )
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
            settings.max_body_bytes = max(
                [settings.max_body_bytes, *(s.settings.max_body_bytes for s in in_process)]
            )
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
