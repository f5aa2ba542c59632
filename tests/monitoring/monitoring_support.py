"""Shared by the monitoring tests: the component's files, a real Prometheus server, promtool, the
prometheus-adapter query expansion, and the metric names a PromQL expression reads."""

import functools
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from services.kit.testing import free_port

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "k8s" / "components" / "monitoring"
PROMETHEUS_RULE = COMPONENT / "prometheusrule.yaml"
DASHBOARD = COMPONENT / "modelserve-dashboard.json"
ADAPTER_RULES = REPO / "k8s" / "components" / "queue-autoscaling" / "prometheus-adapter-rules.yaml"
HPA_QUEUE_PATCH = REPO / "k8s" / "components" / "queue-autoscaling" / "hpa-queue-depth.yaml"
TF_SERVING_MONITORING_CONFIG = REPO / "docker" / "vit" / "monitoring.config"

NAMESPACE = "modelserve"
# In the live tests the all-in-one process stands for one pod serving the four torch services; the
# ViT server is a pod of its own.
PLATFORM_POD, VIT_POD = "platform-0", "vit-0"

# Series that exporters other than the services produce in a cluster; the local platform cannot.
EXTERNAL_PREFIXES = {
    "kube_": "kube-state-metrics",
    "container_": "cAdvisor (kubelet)",
    "DCGM_FI_": "NVIDIA dcgm-exporter",
    ":tensorflow:": "tensorflow/serving (the ViT image); the local ViT server exports serving_* instead",
}


# What the services export that the rules, the dashboard and the autoscaling rely on: family ->
# its own labels. Every scraped series also carries the target's namespace, pod and service.
EXPORTED_FAMILIES = {
    "serving_requests_total": {"protocol", "route", "status"},
    "serving_request_latency_seconds_bucket": {"protocol", "route", "le"},
    "serving_request_latency_seconds_count": {"protocol", "route"},
    "serving_inflight_requests": {"protocol"},
    "serving_queue_seconds_bucket": {"batcher", "le"},
    "serving_queue_seconds_sum": {"batcher"},
    "serving_queue_seconds_count": {"batcher"},
    "serving_compute_seconds_bucket": {"batcher", "le"},
    "serving_compute_seconds_sum": {"batcher"},
    "serving_compute_seconds_count": {"batcher"},
    "serving_batch_size_bucket": {"batcher", "le"},
    "serving_batch_size_sum": {"batcher"},
    "serving_batch_size_count": {"batcher"},
    "serving_queue_depth": {"batcher"},
    "serving_rejected_total": {"batcher", "reason"},
    "process_cpu_seconds_total": set(),
    "asr_requests_total": {"path"},
    "asr_main_forward_passes_total": {"path"},
    "asr_draft_tokens_total": set(),
    "asr_draft_tokens_accepted_total": set(),
    "asr_decoded_tokens_total": {"path"},
    "asr_compute_seconds_total": {"path"},
    "asr_audio_seconds_total": {"path"},
    "tts_real_time_factor_bucket": {"task", "le"},
    "tts_time_to_first_audio_seconds_bucket": {"protocol", "mode", "le"},
    "tts_audio_seconds_total": {"task"},
    "imagegen_denoising_steps_total": {"task"},
    "imagegen_images_total": {"task"},
    "imagegen_interrupted_total": set(),
    "up": set(),  # Prometheus's own, per target
}
TARGET_LABELS = {"namespace", "pod", "service"}


def external_source(metric: str) -> str | None:
    """Which other exporter produces `metric`: directly, or for a recorded series, through every input."""
    source = next((source for prefix, source in EXTERNAL_PREFIXES.items() if metric.startswith(prefix)), None)
    inputs = recording_rule_inputs().get(metric)
    if source is None and inputs:
        sources = {external_source(name) for name in inputs}
        if None not in sources:
            source = ", ".join(sorted(sources))
    return source


def prometheus_rule() -> dict:
    return yaml.safe_load(PROMETHEUS_RULE.read_text())


def write_rules_file(path: Path) -> Path:
    """The PrometheusRule's spec is a Prometheus rules file as it stands (`groups:`)."""
    path.write_text(yaml.safe_dump(prometheus_rule()["spec"], sort_keys=False))
    return path


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for group in prometheus_rule()["spec"]["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


@functools.cache
def recording_rule_inputs() -> dict[str, set[str]]:
    """Recorded name -> the metric names its expression(s) read."""
    inputs: dict[str, set[str]] = {}
    for group in prometheus_rule()["spec"]["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                inputs.setdefault(rule["record"], set()).update(metric_names(rule["expr"]))
    return inputs


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in prometheus_rule()["spec"]["groups"] for rule in group["rules"]]


def service_monitors() -> dict[str, dict]:
    """The component's ServiceMonitors by the modelserve.io/runtime label they select."""
    docs = yaml.safe_load_all((COMPONENT / "servicemonitors.yaml").read_text())
    return {doc["spec"]["selector"]["matchLabels"]["modelserve.io/runtime"]: doc for doc in docs}


def service_monitor_paths() -> dict[str, str]:
    """Metrics path per runtime (torch, tf-serving), as the ServiceMonitors scrape them."""
    return {
        runtime: monitor["spec"]["endpoints"][0]["path"] for runtime, monitor in service_monitors().items()
    }


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def dashboard_variable_queries() -> list[str]:
    """The PromQL inside the template variables' `label_values(<expr>, <label>)` queries."""
    queries = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match, f"unexpected variable query {variable['query']}"
            queries.append(match.group(1))
    return queries


# What Grafana substitutes before a query reaches Prometheus (1 s scrapes here: 1m holds plenty).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": "modelserve"}


def as_prometheus_sees_it(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr


def referenced_metrics() -> dict[str, set[str]]:
    """Raw metric names (not recorded ones) read by the rules, the dashboard and the adapter rules."""
    recorded = recorded_names()
    sources = {
        "rules": rule_expressions(),
        "dashboard": [expr for _, expr in dashboard_targets()] + dashboard_variable_queries(),
        "prometheus-adapter": [rule["seriesQuery"] for rule in adapter_rules()],
    }
    return {
        source: set().union(*(metric_names(expr) for expr in exprs)) - recorded
        for source, exprs in sources.items()
    }


def hpa_queue_metric() -> tuple[str, float]:
    """(metric name, per-pod average target) the queue-autoscaling HPAs use."""
    patch = yaml.safe_load(HPA_QUEUE_PATCH.read_text())
    pods = patch[0]["value"][0]["pods"]
    return pods["metric"]["name"], float(pods["target"]["averageValue"])


def tf_serving_metrics_path() -> str:
    match = re.search(r'path:\s*"([^"]+)"', TF_SERVING_MONITORING_CONFIG.read_text())
    assert match, f"no prometheus_config path in {TF_SERVING_MONITORING_CONFIG}"
    return match.group(1)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# -- PromQL: which metrics does an expression read? -------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(
    r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
)
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names of the vector selectors in `expr` (functions, keywords, labels and numbers left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for token in _TOKEN.finditer(text):
        name = token.group("name")
        if name is None or name.lower() in _KEYWORDS:
            continue
        if text[token.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        names.add(name)
    return names


# -- prometheus-adapter ----------------------------------------------------------------------------

_TEMPLATE_FIELD = re.compile(r"<<\s*\.(\w+)\s*>>")


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_RULES.read_text())["rules"]


def expand_metrics_query(rule: dict, series: str, namespace: str, pods: list[str]) -> str:
    """The query prometheus-adapter sends for a pods metric, built as its metricsQuery Build does:
    LabelMatchers = the namespace matcher, then the pod matcher (`=` for one pod, `=~"a|b"` for
    several; values Go-%q quoted), joined with ","; GroupBy = the pod label; Series = the series name.
    Label names come from the rule's resources.overrides."""
    label_of = {override["resource"]: label for label, override in rule["resources"]["overrides"].items()}
    pod_label = label_of["pod"]
    matchers = [f"{label_of['namespace']}={json.dumps(namespace)}"]
    if len(pods) == 1:
        matchers.append(f"{pod_label}={json.dumps(pods[0])}")
    else:
        matchers.append(f"{pod_label}=~{json.dumps('|'.join(pods))}")
    values = {"Series": series, "LabelMatchers": ",".join(matchers), "GroupBy": pod_label}
    query = _TEMPLATE_FIELD.sub(lambda match: values[match.group(1)], rule["metricsQuery"])
    assert "<<" not in query and ">>" not in query, f"template actions this expander does not know: {query}"
    return query


def adapter_metric_name(rule: dict, series: str) -> str | None:
    """The custom-metrics API name of a Prometheus series under the rule's `name` mapping: `matches`
    is replaced by `as` ($N = capture groups; without `as`, $1 when there is one group, else $0)."""
    name = rule.get("name", {})
    match = re.search(name.get("matches", ".*"), series)
    if match is None:
        return None
    template = name.get("as") or ("$1" if match.re.groups == 1 else "$0")
    replaced = re.sub(r"\$\{?(\d+)\}?", lambda group: match.group(int(group.group(1))) or "", template)
    return series[: match.start()] + replaced + series[match.end() :]


# -- a real Prometheus ------------------------------------------------------------------------------


class PrometheusError(RuntimeError):
    pass


# Generous: with the cores busy (other tests, stress-ng) an instant query can take seconds; a slow answer
# is no failure here.
API_TIMEOUT_S = 60.0


@dataclass
class PrometheusServer:
    workdir: Path
    scrape_configs: list[dict]
    rule_files: list[Path] = field(default_factory=list)
    interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 120.0) -> "PrometheusServer":
        config = {
            "global": {
                "scrape_interval": self.interval,
                "scrape_timeout": self.interval,
                "evaluation_interval": self.interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": self.scrape_configs,
        }
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        check = promtool("check", "config", str(config_file))
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                shutil.which("prometheus"),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=API_TIMEOUT_S).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError("prometheus was not ready in time")
            time.sleep(0.2)

    def _api(self, path: str, params: dict | list) -> dict:
        reply = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=API_TIMEOUT_S).json()
        if reply.get("status") != "success":
            raise PrometheusError(f"{reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query, now or at the unix time `at`."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        return self._api("query", params)["result"]

    def series(self, match: str) -> list[dict]:
        return self._api("series", [("match[]", match)])

    def metric_names(self) -> set[str]:
        return set(self._api("label/__name__/values", {}))

    def targets(self) -> list[dict]:
        return self._api("targets", {})["activeTargets"]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()
