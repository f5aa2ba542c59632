"""HPA recording through the real kubernetes client, the plots, and the run planning helpers.

No cluster runs here, so a small HTTP server answers the one API call the recorder makes (list the
namespace's autoscaling/v2 HPAs) with replica counts that grow over time; the client reaches it
through an ordinary kubeconfig, exactly as it would reach a cluster.
"""

import ast
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from loadtests import hpa, report
from loadtests.run import parse_duration, resolve_targets
from loadtests.scenario import PROTOCOLS, SERVICES, split_users, user_class
from services.kit.launch import read_env_file

NAMESPACE = "modelserve"
HPA_PATH = f"/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers"


def hpa_object(name: str, current: int, desired: int, cpu: int) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": 4,
        },
        "status": {
            "currentReplicas": current,
            "desiredReplicas": desired,
            "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}
            ],
        },
    }


@pytest.fixture
def fake_cluster(tmp_path, monkeypatch):
    """A kubeconfig whose current context points at a fake API server; yields the served paths."""
    paths = []

    class API(BaseHTTPRequestHandler):
        def do_GET(self):
            paths.append(self.path.split("?")[0])
            calls = len(paths)
            replicas = min(4, 1 + calls // 2)
            items = [
                hpa_object("translation", replicas, min(4, replicas + 1), 40 + 10 * calls),
                hpa_object("tts", 1, 1, 5),
            ]
            body = json.dumps(
                {
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscalerList",
                    "metadata": {},
                    "items": items,
                }
            ).encode()
            status = 200 if self.path.startswith(HPA_PATH) else 404
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), API)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [
                    {"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}
                ],
                "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": NAMESPACE}}
                ],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    yield paths
    server.shutdown()


def write_history(path: Path, seconds: int = 12) -> None:
    """A stats_history.csv in Locust's format: a ramp to 4 users, one request name plus Aggregated."""
    header = (
        "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
        "99.99%,100%,Total Request Count,Total Failure Count"
    )
    lines = [header]
    for t in range(seconds):
        users = min(4, t)
        latency = "N/A" if t == 0 else str(50 + 10 * users)
        for kind, name in (("POST", "translation: POST /v1/translate"), ("", "Aggregated")):
            cells = [
                str(1_800_000_000 + t),
                str(users),
                kind,
                name,
                f"{2.0 * users}",
                "0.0",
                *[latency] * 11,
                str(5 * t),
                "0",
            ]
            lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def test_hpa_recorder_reads_replicas_through_the_kubernetes_client(fake_cluster, tmp_path):
    api, namespace = hpa.connect()
    assert namespace == NAMESPACE
    recorder = hpa.HpaRecorder(api, namespace, ["translation"], interval_s=0.05)
    recorder.start()
    while len(recorder.samples) < 6:
        recorder.join(0.05)
    recorder.stop()
    assert recorder.error is None and set(fake_cluster) == {HPA_PATH}
    assert {s.hpa for s in recorder.samples} == {"translation"}  # filtered by name
    replicas = [s.current_replicas for s in recorder.samples]
    assert replicas == sorted(replicas) and replicas[0] == 1 and replicas[-1] >= 3
    assert recorder.samples[0].max_replicas == 4 and recorder.samples[0].cpu_percent == 50
    recorder.write_csv(tmp_path / "hpa.csv")
    assert hpa.read_csv(tmp_path / "hpa.csv") == recorder.samples


def test_no_kubeconfig_means_no_recording(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert hpa.connect() is None


def test_plots_draw_latency_throughput_users_and_replicas(tmp_path):
    write_history(tmp_path / "history.csv")
    samples = [
        hpa.HpaSample(1_800_000_000 + t, "translation", 1 + t // 4, 1 + t // 3, 1, 4, 60) for t in range(12)
    ]
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    with_hpa = report.plot(tmp_path / "history.csv", tmp_path / "with", samples, "test")
    without = report.plot(tmp_path / "history.csv", tmp_path / "without", None, "test")
    assert [p.name for p in with_hpa] == ["loadtest.png", "latency_by_request.png"]
    with Image.open(with_hpa[0]) as a, Image.open(without[0]) as b:
        assert a.size == b.size and ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox()


def test_summary_table_lists_every_request(tmp_path):
    stats = tmp_path / "stats.csv"
    stats.write_text(
        "Type,Name,Request Count,Failure Count,50%,95%,99%,Requests/s\n"
        "POST,translation: POST /v1/translate,10,1,50,90,120,2.5\n,Aggregated,10,1,50,90,120,2.5\n"
    )
    table = report.summary_table(stats).splitlines()
    assert table[2] == "| translation: POST /v1/translate | POST | 10 | 1 | 50 | 90 | 120 | 2.50 |"
    assert table[3].startswith("| Aggregated |")


def test_users_are_split_by_weight_with_every_class_covered():
    weights = {"A": 4, "B": 1, "C": 1}
    assert split_users(3, weights) == {"A": 1, "B": 1, "C": 1}
    assert split_users(9, weights) == {"A": 5, "B": 2, "C": 2}
    assert sum(split_users(50, weights).values()) == 50
    with pytest.raises(ValueError, match="at least 3"):
        split_users(2, weights)


def test_every_service_and_protocol_names_a_user_class():
    # Read, not imported: importing Locust monkey-patches the standard library of the test process.
    users = ast.parse((Path(__file__).resolve().parents[2] / "loadtests" / "users.py").read_text())
    defined = {node.name for node in users.body if isinstance(node, ast.ClassDef)}
    assert {"ASRRestUser", "TTSGrpcUser", "ViTRestUser", "ImageGenGrpcUser"} <= defined
    assert {user_class(service, protocol) for service in SERVICES for protocol in PROTOCOLS} <= defined


def test_durations_targets_and_env_files(tmp_path):
    assert [parse_duration(t) for t in ("90", "45s", "2m", "1h30m")] == [90, 45, 120, 5400]
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("soon")

    class Args:
        host, grpc_host, vit_host, vit_grpc_host, service = "http://gpu-box:8000", "", "", "", "all"

    assert resolve_targets(Args) == {
        "host": "http://gpu-box:8000",
        "grpc": "gpu-box:50051",
        "vit": "http://gpu-box:8501",
        "vit_grpc": "gpu-box:8500",
    }
    Args.service, Args.host = "vit", "http://vit.example:8501"
    assert resolve_targets(Args)["vit"] == "http://vit.example:8501"
    env = tmp_path / "x.env"
    env.write_text('# comment\nA=1\nB=\'{"k": "v w"}\'\n\nC="two words"  # trailing\n')
    assert read_env_file(env) == {"A": "1", "B": '{"k": "v w"}', "C": "two words"}
