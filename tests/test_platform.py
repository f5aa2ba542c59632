"""The all-in-one platform process: discovery, selection, readiness and a clean SIGTERM stop."""

import os
import sys

import httpx
import pytest

from services.kit.config import PlatformSettings, ServerSettings, ServiceSettings
from services.kit.launch import Launched, free_port
from services.platform import available_services, selected_services


def test_every_service_package_is_discovered():
    assert "translation" in available_services()
    assert "kit" not in available_services()


def test_unknown_service_names_are_refused_with_the_list():
    with pytest.raises(SystemExit, match="unknown services \\['nope'\\]"):
        selected_services(PlatformSettings(services="translation,nope"))


def test_platform_settings_offer_only_what_the_platform_honours():
    # Model and batching knobs are each service's (TRANSLATION_MAX_BATCH_SIZE...): a PLATFORM_ one would be ignored.
    per_service = set(ServiceSettings.model_fields) - set(ServerSettings.model_fields)
    assert {"device", "dtype", "max_batch_size", "max_queue", "request_timeout_s"} <= per_service
    assert not per_service & set(PlatformSettings.model_fields)
    assert set(PlatformSettings.model_fields) == {*ServerSettings.model_fields, "services"}


def test_platform_settings_read_the_platform_prefix(monkeypatch):
    monkeypatch.setenv("PLATFORM_REST_PORT", "8123")
    monkeypatch.setenv("PLATFORM_MAX_CONCURRENCY", "7")
    settings = PlatformSettings()
    assert (settings.rest_port, settings.max_concurrency) == (8123, 7)


def test_platform_serves_selected_services_and_stops_cleanly_on_sigterm(models_dir):
    rest, grpc_port = free_port(), free_port()
    pairs = '{"en-de": "%s"}' % (models_dir / "translation" / "wmt19-en-de")
    env = {**os.environ, "PLATFORM_SERVICES": "translation", "PLATFORM_REST_PORT": str(rest),
           "PLATFORM_GRPC_PORT": str(grpc_port), "PLATFORM_HOST": "127.0.0.1", "PLATFORM_LOG_LEVEL": "warning",
           "TRANSLATION_MODELS": pairs}
    url = f"http://127.0.0.1:{rest}"
    with Launched([sys.executable, "-m", "services"], env=env, ready=[url + "/readyz"]) as platform:
        reply = httpx.post(url + "/v1/translate", json={"text": "Hi", "source_lang": "en", "target_lang": "de",
                                                        "max_new_tokens": 4}, timeout=30)
        assert reply.status_code == 200
        assert platform.stop() == 0, platform.log_tail()
