"""The Grafana dashboard without a Grafana: its layout, that promtool parses every query, and that
each query reads only what the services export, the rules record, or a named external exporter.
(test_prometheus_live.py runs the same queries against a real Prometheus.)"""

import shutil

import pytest
import yaml
from monitoring_support import (
    EXPORTED_FAMILIES,
    as_prometheus_sees_it,
    dashboard,
    dashboard_targets,
    dashboard_variable_queries,
    external_source,
    metric_names,
    promtool,
    recorded_names,
    referenced_metrics,
)

SERVICE_ROWS = ["Translation", "ASR", "TTS", "Image generation", "ViT (TensorFlow Serving)"]


def rows() -> dict[str, list[dict]]:
    """Row title -> the panels under it (the dashboard keeps rows expanded, panels follow their row)."""
    grouped: dict[str, list[dict]] = {}
    current = None
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            grouped[current] = []
        else:
            assert current is not None, f"panel {panel['title']!r} before the first row"
            grouped[current].append(panel)
    return grouped


def test_rows_per_service_with_the_panels_an_operator_needs():
    grouped = rows()
    assert list(grouped) == ["Overview", *SERVICE_ROWS]
    for title in ("Translation", "ASR", "TTS", "Image generation"):
        exprs = " ".join(t["expr"] for panel in grouped[title] for t in panel["targets"])
        for needed in (
            "serving_requests:rate5m",
            "serving_request_errors:ratio_rate5m",
            "p50_rate5m",
            "p95_rate5m",
            "p99_rate5m",
            "serving_queue_seconds",
            "serving_compute_seconds",
            "serving_batch_size",
            "kube_horizontalpodautoscaler_status_current_replicas",
            "process_cpu_seconds",
            "gpu_utilization",
        ):
            assert needed in exprs, f"{title} row lacks {needed}"
    speech = " ".join(t["expr"] for row in ("ASR", "TTS") for p in grouped[row] for t in p["targets"])
    assert "asr_draft_acceptance" in speech and "asr_requests" in speech and "tts_real_time_factor" in speech
    images = " ".join(t["expr"] for p in grouped["Image generation"] for t in p["targets"])
    assert "imagegen_denoising_steps" in images


def test_panels_are_well_formed():
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard()["panels"]:
        x, w = panel["gridPos"]["x"], panel["gridPos"]["w"]
        assert 0 <= x and x + w <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_every_query_parses(tmp_path):
    """promtool parses each query (Grafana's variables substituted) as a recording rule."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed: `make prometheus` installs it (make test does)")
    queries = [expr for _, expr in dashboard_targets()] + dashboard_variable_queries()
    rules = [
        {"record": f"dashboard:query_{i}", "expr": as_prometheus_sees_it(expr)}
        for i, expr in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", "--lint=none", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_queries_read_only_known_series():
    known = set(EXPORTED_FAMILIES) | recorded_names()
    unknown = {
        title: sorted(name for name in metric_names(expr) if name not in known and not external_source(name))
        for title, expr in dashboard_targets()
    }
    assert {title: names for title, names in unknown.items() if names} == {}


def test_rules_and_adapter_read_only_known_series():
    """The table of exported families (checked against a real scrape) covers what everything reads."""
    for source, names in referenced_metrics().items():
        unlisted = sorted(
            name for name in names if name not in EXPORTED_FAMILIES and not external_source(name)
        )
        assert unlisted == [], f"{source} reads {unlisted}"


def test_external_series_are_named_with_their_exporter():
    external = {
        name: external_source(name)
        for names in referenced_metrics().values()
        for name in names
        if external_source(name)
    }
    assert external["kube_horizontalpodautoscaler_status_current_replicas"] == "kube-state-metrics"
    assert external["container_cpu_usage_seconds_total"] == "cAdvisor (kubelet)"
    assert external["DCGM_FI_DEV_GPU_UTIL"] == "NVIDIA dcgm-exporter"
    assert external_source("namespace_pod:gpu_utilization:avg") == "NVIDIA dcgm-exporter"  # recorded from it
    assert external_source("namespace_service:serving_requests:rate5m") is None  # ours (and TF Serving's)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (pod) (rate(serving_requests_total{status=~"5..", route="/v1/x"}[5m]))',
            {"serving_requests_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(:tensorflow:serving:request_latency_bucket[1m]))) / 1e6",
            {":tensorflow:serving:request_latency_bucket"},
        ),
        (
            "a:b:rate5m > bool 0.5 * on (namespace) group_left(pod) up offset 5m or vector(1)",
            {"a:b:rate5m", "up"},
        ),
        ('sum(max_over_time(x{pod=~"a|b"}[1m])) by (pod)', {"x"}),
    ],
)
def test_metric_name_extraction(expr, names):
    assert metric_names(expr) == names
