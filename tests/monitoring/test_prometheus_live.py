"""A real Prometheus scrapes the local platform after real requests: every metric family the rules,
the dashboard and the autoscaling rely on is there with its labels, the recording rules produce
series from it, the dashboard's queries run and show data, and prometheus-adapter's query for the
queue-autoscaling HPAs rises per pod under a burst of slow requests."""

import re

import pytest
from monitoring_support import (
    EXPORTED_FAMILIES,
    NAMESPACE,
    PLATFORM_POD,
    TARGET_LABELS,
    VIT_POD,
    PrometheusError,
    adapter_metric_name,
    adapter_rules,
    as_prometheus_sees_it,
    dashboard_targets,
    dashboard_variable_queries,
    external_source,
    hpa_queue_metric,
    metric_names,
    recorded_names,
    rule_expressions,
)


def test_both_targets_are_scraped_on_the_paths_the_service_monitors_name(prometheus, traffic):
    scraped = {
        s["metric"]["job"]: s["value"][1] for s in prometheus.query("max by (job) (max_over_time(up[1m]))")
    }
    assert scraped == {"platform": "1", "vit": "1"}, prometheus.targets()
    urls = {t["labels"]["job"]: t["scrapeUrl"] for t in prometheus.targets()}
    assert urls["platform"].endswith("/metrics") and urls["vit"].endswith("/monitoring/prometheus/metrics")


def test_every_family_relied_on_is_exported_with_its_labels(prometheus, traffic, queue_burst):
    missing, wrong_labels = [], {}
    for family, labels in EXPORTED_FAMILIES.items():
        series = prometheus.series(f'{family}{{namespace="{NAMESPACE}"}}')
        if not series:
            missing.append(family)
            continue
        expected = labels | TARGET_LABELS
        if not all(expected <= set(s) for s in series):
            wrong_labels[family] = [sorted(set(s) - {"__name__", "job", "instance"}) for s in series][:3]
    assert missing == [] and wrong_labels == {}, f"missing: {missing}; labels: {wrong_labels}"


def test_label_values_the_rules_match_on_are_the_exported_ones(prometheus, traffic, queue_burst):
    routes = {s["route"] for s in prometheus.series("serving_requests_total")}
    assert {
        "/v1/translate",
        "/translation.v1.Translation/Translate",
        "/v1/audio/transcriptions",
        "/v1/audio/speech",
        "/v1/images/generations",
        "/v1/models/{model}:predict",
    } <= routes
    statuses = {s["status"] for s in prometheus.series("serving_requests_total")}
    assert {"200", "OK", "503"} <= statuses and any(s.startswith("4") for s in statuses), statuses
    assert {s["path"] for s in prometheus.series("asr_requests_total")} <= {"assisted", "plain"}
    assert {s["reason"] for s in prometheus.series("serving_rejected_total")} >= {"queue_full"}
    batchers = {s["batcher"] for s in prometheus.series("serving_queue_depth")}
    assert {
        "translation.translate",
        "asr.transcribe",
        "tts.speech",
        "imagegen.generate",
        "vit.predict",
    } <= batchers
    # The latency SLOs pick buckets by bound: each bound a rule matches must be an exported one.
    bounds = {s["le"] for s in prometheus.series("serving_request_latency_seconds_bucket")}
    patterns = {
        match.replace("\\\\", "\\")
        for expr in rule_expressions()
        for match in re.findall(r'le=~"([^"]+)"', expr)
    }
    assert len(patterns) == 3
    for pattern in patterns:
        assert any(re.fullmatch(pattern, bound) for bound in bounds), (pattern, sorted(bounds))


def test_recording_rules_produce_series_from_the_real_metrics(prometheus, traffic, queue_burst):
    produced = recorded_names() & prometheus.metric_names()
    # Only the latency-SLO rules need a service name with an objective (the all-in-one pod has
    # none but vit), and the cAdvisor/DCGM rules need those exporters.
    assert recorded_names() - produced <= {
        "namespace_pod:container_cpu_usage_seconds:rate5m",
        "namespace_pod:gpu_utilization:avg",
    }, sorted(recorded_names() - produced)
    errors = prometheus.query(
        'namespace_service_route:serving_request_errors:ratio_rate5m{route="/v1/images/generations"}'
    )
    assert any(float(s["value"][1]) > 0 for s in errors), errors  # the burst's 503s
    shed = prometheus.query('namespace_service:serving_requests_shed:ratio_rate5m{service="platform"}')
    assert shed and float(shed[0]["value"][1]) > 0, shed
    translate = prometheus.query('namespace_service_route:serving_requests:rate5m{route="/v1/translate"}')
    assert translate and float(translate[0]["value"][1]) > 0


def test_adapter_series_query_finds_per_pod_series_named_as_the_hpa_expects(prometheus, traffic):
    rule = adapter_rules()[0]
    series = prometheus.series(rule["seriesQuery"])
    assert {s["pod"] for s in series} == {PLATFORM_POD, VIT_POD}
    assert {adapter_metric_name(rule, s["__name__"]) for s in series} == {hpa_queue_metric()[0]}


def test_adapter_metric_rises_per_pod_under_a_burst(queue_burst):
    assert "<<" not in queue_burst.query and f'namespace="{NAMESPACE}"' in queue_burst.query
    assert set(queue_burst.before) == {PLATFORM_POD, VIT_POD}, queue_burst.before
    platform_peak = queue_burst.peak[PLATFORM_POD]
    assert platform_peak >= hpa_queue_metric()[1], queue_burst  # the HPA would add pods
    assert queue_burst.before[PLATFORM_POD] == 0  # quiet before the traffic
    # The burst queued only on the platform pod: per-pod values stay apart.
    assert queue_burst.peak[VIT_POD] == queue_burst.before[VIT_POD]
    # Past the queue limit requests were refused, the rest answered.
    assert (
        set(queue_burst.statuses) <= {200, 503}
        and 503 in queue_burst.statuses
        and 200 in queue_burst.statuses
    )


def test_dashboard_queries_run_and_use_only_series_prometheus_has(prometheus, traffic, queue_burst):
    seen = prometheus.metric_names()
    unknown = {}
    for title, expr in dashboard_targets():
        try:
            prometheus.query(as_prometheus_sees_it(expr))
        except PrometheusError as error:
            pytest.fail(f"panel {title!r}: {error}\n{expr}")
        names = {name for name in metric_names(expr) if not external_source(name)}
        if names - seen:
            unknown[title] = sorted(names - seen)
    assert unknown == {}, f"panels reading series nothing exports: {unknown}"


def test_dashboard_panels_show_data_for_traffic(prometheus, traffic, queue_burst):
    """With the service filter widened to the local pods, every panel not fed by an external exporter
    returns series: its labels, windows and joins fit what the services export."""
    empty = []
    for title, expr in dashboard_targets():
        if any(external_source(name) for name in metric_names(expr)):
            continue
        widened = re.sub(r'service="[a-z]+"', 'service=~".+"', as_prometheus_sees_it(expr))
        if not prometheus.query(widened):
            empty.append((title, expr))
    for query in dashboard_variable_queries():
        if not prometheus.query(as_prometheus_sees_it(query)):
            empty.append(("variable", query))
    assert empty == [], empty
