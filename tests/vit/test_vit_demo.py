"""The ViT demo hook (what `make demo` runs) against a real server."""

import json


def test_demo_classifies_over_rest_and_grpc(vit_server, tmp_path, monkeypatch):
    from tools.demo import vit as demo

    monkeypatch.setenv("VIT_REST_PORT", str(vit_server.settings.rest_port))
    monkeypatch.setenv("VIT_GRPC_PORT", str(vit_server.settings.grpc_port))
    lines = demo.run("http://127.0.0.1:1", "127.0.0.1:1", tmp_path)  # the platform's URLs are not used

    saved = json.loads((tmp_path / "predictions.json").read_text())
    rest_labels = [saved[f"rest {name}"]["prediction"]["label"] for name in ("sunset.jpg", "checker.png")]
    assert saved["grpc"]["labels"] == rest_labels, "REST and gRPC disagree on the same images"
    assert (tmp_path / "sunset.jpg").stat().st_size > 0
    assert any(line.startswith("gRPC batch of 2") for line in lines)
