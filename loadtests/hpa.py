"""Record HorizontalPodAutoscaler replica counts during a load test (kubernetes Python client).

When a Kubernetes context is available (a kubeconfig, or running inside a pod), a background thread
lists the namespace's HPAs every few seconds and keeps current and desired replicas and the CPU
utilisation the HPA sees; the report plots them on the same time axis as the load.
"""

import csv
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FIELDS = (
    "timestamp",
    "hpa",
    "current_replicas",
    "desired_replicas",
    "min_replicas",
    "max_replicas",
    "cpu_percent",
)


@dataclass(frozen=True)
class HpaSample:
    timestamp: float
    hpa: str
    current_replicas: int
    desired_replicas: int
    min_replicas: int
    max_replicas: int
    cpu_percent: int | None


def connect(context: str | None = None, kubeconfig: str | None = None):
    """(AutoscalingV2Api, the context's namespace or None), or None when no cluster is configured.

    The kubeconfig is $KUBECONFIG (read now, not when the kubernetes package was imported) or
    ~/.kube/config; inside a pod the service account is used.
    """
    from kubernetes import client, config

    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        namespace = (chosen or {}).get("context", {}).get("namespace")
    except (config.ConfigException, FileNotFoundError, TypeError, KeyError):
        try:
            config.load_incluster_config()
        except config.ConfigException:
            return None
        namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
    return client.AutoscalingV2Api(), namespace


def _cpu_percent(hpa) -> int | None:
    for metric in (hpa.status.current_metrics or []) if hpa.status else []:
        resource = getattr(metric, "resource", None)
        if resource is not None and resource.name == "cpu" and resource.current is not None:
            return resource.current.average_utilization
    return None


class HpaRecorder(threading.Thread):
    def __init__(self, api, namespace: str, names: list[str] | None = None, interval_s: float = 5.0):
        super().__init__(name="hpa-recorder", daemon=True)
        self.api = api
        self.namespace = namespace
        self.names = set(names or [])  # empty: every HPA in the namespace
        self.interval_s = interval_s
        self.samples: list[HpaSample] = []
        self.error: str | None = None
        self._stop_event = threading.Event()

    def sample(self) -> None:
        listing = self.api.list_namespaced_horizontal_pod_autoscaler(self.namespace, _request_timeout=10)
        now = time.time()
        for hpa in listing.items:
            if self.names and hpa.metadata.name not in self.names:
                continue
            status = hpa.status
            self.samples.append(
                HpaSample(
                    timestamp=now,
                    hpa=hpa.metadata.name,
                    current_replicas=status.current_replicas or 0,
                    desired_replicas=status.desired_replicas or 0,
                    min_replicas=hpa.spec.min_replicas or 1,
                    max_replicas=hpa.spec.max_replicas,
                    cpu_percent=_cpu_percent(hpa),
                )
            )

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.sample()
            except Exception as exc:  # an API hiccup must not end the load test; the report says so
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("reading HPAs in %s failed: %s", self.namespace, self.error)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(FIELDS)
            for s in self.samples:
                writer.writerow([getattr(s, name) if getattr(s, name) is not None else "" for name in FIELDS])


def read_csv(path: Path) -> list[HpaSample]:
    with path.open() as handle:
        return [
            HpaSample(
                float(row["timestamp"]),
                row["hpa"],
                int(row["current_replicas"]),
                int(row["desired_replicas"]),
                int(row["min_replicas"]),
                int(row["max_replicas"]),
                int(row["cpu_percent"]) if row["cpu_percent"] else None,
            )
            for row in csv.DictReader(handle)
        ]
