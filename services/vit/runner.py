"""SavedModel servables in TF Serving's layout: the models of a model config, each version loaded as its
version policy says, warm-up records replayed, new versions picked up by polling, the config replaceable
while serving, and a signature run on batches merged across requests. No web code.

Any SavedModel works (the ViT export, a test's half_plus_three); the ViT specifics live in the model's
own signatures. Versions are numeric directories under a model's ``base_path`` holding a
``saved_model.pb``; which are loaded follows ``model_version_policy`` (TF Serving's default: the latest
only), and requests without a version or label get the highest loaded one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from prometheus_client import Counter, Gauge
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from services.kit.batcher import Work
from services.kit.errors import Cancelled, InvalidArgument, NotFound, ServiceError

from .errors import FailedPrecondition, Unknown
from .examples import INPUTS, input_examples
from .model_config import (
    ModelEntry,
    check_reload,
    model_entries,
    read_config_file,
    single_model_config,
    version_dirs,
)
from .servables import DEFAULT_SIGNATURE, PredictJob, Servable, VersionState, servable_not_found
from .settings import ViTSettings

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"

MODEL_CALLS = Counter(
    "vit_signature_calls_total", "Signature executions (one per merged batch)", ["model", "signature"]
)
PREDICTED_ROWS = Counter(
    "vit_predicted_rows_total",
    "Rows (images) predicted, by model version and signature",
    ["model", "version", "signature"],
)
BATCH_FALLBACKS = Counter(
    "vit_batch_fallbacks_total",
    "Merged batches re-run request by request because one request failed",
    ["model"],
)
LATEST_VERSION = Gauge("vit_model_latest_version", "Highest available version", ["model"])
VERSION_LOADS = Counter("vit_version_loads_total", "Version load attempts", ["model", "outcome"])
_gauge_models: set[str] = set()  # models LATEST_VERSION has a series for (removed with the model)

# Unloaded versions and removed models stay in GetModelStatus as END; these bound what is remembered.
MAX_ENDED_VERSIONS = 64
MAX_RETIRED_MODELS = 64
MAX_CONFIG_FILE_BYTES = 4 * 1024 * 1024


def configure_tensorflow(settings: ViTSettings) -> None:
    """Thread pools and device visibility; TensorFlow accepts both only before its runtime starts."""
    try:
        if settings.device == "cpu":
            tf.config.set_visible_devices([], "GPU")
        if settings.threads:
            # TF and torch share the machine: without a cap each sizes its pools to every core.
            tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
            tf.config.threading.set_inter_op_parallelism_threads(settings.threads)
    except RuntimeError:
        log.warning("TensorFlow was already initialised in this process: device/thread settings not applied")


def replay_warmup(servable: Servable) -> int:
    """Replay assets.extra/tf_serving_warmup_requests as TF Serving's --enable_model_warmup does."""
    records = servable.path / WARMUP_FILE
    if not records.exists():
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(records)).as_numpy_iterator():
        entry = prediction_log_pb2.PredictionLog.FromString(record)
        kind = entry.WhichOneof("log_type")
        if kind == "predict_log":
            request = entry.predict_log.request
            inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        elif kind in ("classify_log", "regress_log"):
            request = getattr(entry, kind).request
            inputs = {INPUTS: np.array(input_examples(request.input, limits=None), dtype=object)}
        else:
            continue
        servable.signatures[request.model_spec.signature_name or DEFAULT_SIGNATURE].run(inputs)
        count += 1
    return count


@dataclass(frozen=True)
class ModelVersions:
    """One configured model: its loaded versions, the versions that failed to load and the versions that
    were unloaded (reported as END, as TF Serving's state monitor keeps them)."""

    entry: ModelEntry
    servables: dict[int, Servable] = field(default_factory=dict)
    # version -> (saved_model.pb mtime, error)
    failed: dict[int, tuple[float, str]] = field(default_factory=dict)
    ended: dict[int, str] = field(default_factory=dict)  # version -> its load error, "" when simply unloaded


@dataclass(frozen=True)
class Registry:
    """Every model, published as one object: readers (the event loop, request threads) take a snapshot that
    no thread mutates (scans and reloads build the next one and swap the reference), so a request sees
    labels, versions and failures of one moment, and an unloaded version stays alive for requests that
    already hold it."""

    models: dict[str, ModelVersions] = field(default_factory=dict)
    retired: dict[str, dict[int, str]] = field(default_factory=dict)  # removed models' versions, all END


def _newest(states: dict[int, str], limit: int) -> dict[int, str]:
    return {version: states[version] for version in sorted(states, reverse=True)[:limit]}


class ViTRunner:
    """The models of a TF Serving model config, each kept in sync with its base path under its version
    policy; the config itself can be replaced while serving (HandleReloadConfigRequest, file polling)."""

    def __init__(self, settings: ViTSettings):
        self.settings = settings
        self._registry = Registry()  # replaced whole, never mutated: readers need no lock
        if settings.model_config_file is None:
            single = single_model_config(settings.model_name, Path(settings.model_base) / settings.model_name)
            entry = model_entries(single, max_models=1)[0]
            self._registry = Registry({entry.name: ModelVersions(entry)})
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------

    def load(self) -> None:
        configure_tensorflow(self.settings)
        if self.settings.model_config_file is not None:
            config = read_config_file(self.settings.model_config_file, MAX_CONFIG_FILE_BYTES)
        else:
            config = single_model_config(
                self.settings.model_name, Path(self.settings.model_base) / self.settings.model_name
            )
        entries = model_entries(config, self.settings.max_models)
        for entry in entries:
            if (
                entry.name == self.settings.model_name
                and self.settings.checkpoint
                and not version_dirs(entry.base_path)
            ):
                self._export_checkpoint(entry.base_path)
        # TF Serving fails to start when a model never becomes available; so does this server.
        self.reload(config, warmup=False, startup=True)
        if self.settings.poll_interval_s > 0:
            self._start(self._poll_versions, "vit-version-poll")
        if (
            self.settings.model_config_file is not None
            and self.settings.model_config_file_poll_wait_seconds > 0
        ):
            self._start(self._poll_config_file, "vit-config-poll")

    def warmup(self) -> None:
        for model in self._registry.models.values():
            for servable in model.servables.values():
                log.info(
                    "%s version %d: replayed %d warm-up requests",
                    servable.name,
                    servable.version,
                    replay_warmup(servable),
                )

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _start(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _export_checkpoint(self, base_path: Path) -> None:
        # keras-hub is needed only here: the server image ships without the exporter and its dependencies.
        from .export import export_saved_model

        log.info("%s has no version yet: exporting %s", base_path, self.settings.checkpoint)
        export_saved_model(self.settings.checkpoint, base_path.parent, base_path.name)

    # -- config and versions --------------------------------------------------------------------

    def reload(
        self,
        config: model_server_config_pb2.ModelServerConfig,
        warmup: bool | None = None,
        startup: bool = False,
    ) -> None:
        """ServerCore::ReloadConfig: load new models and versions, unload removed ones, move labels.

        Checked first, changing nothing when refused: the config itself (InvalidArgument) and every label,
        which must name a version that is AVAILABLE now (FailedPrecondition) unless
        VIT_ALLOW_VERSION_LABELS_FOR_UNAVAILABLE_MODELS, as in TF Serving, where a label on a model that is
        still loading (any label at start-up) needs --allow_version_labels_for_unavailable_models.
        Requests in flight keep the servable they resolved; it is freed once they finish.
        """
        entries = model_entries(config, self.settings.max_models)
        warmup = self.settings.warmup if warmup is None else warmup
        with self._scan_lock:
            current = self._registry
            self._check_labels(entries, current)
            models = {}
            for entry in entries:
                previous = current.models.get(entry.name)
                if previous is None:
                    previous = ModelVersions(entry, ended=current.retired.get(entry.name, {}))
                models[entry.name] = self._sync(previous, entry, warmup)
            retired = {name: ended for name, ended in current.retired.items() if name not in models}
            for name, gone in current.models.items():
                if name not in models:
                    states = {**gone.ended, **{v: error for v, (_, error) in gone.failed.items()}}
                    states.update(dict.fromkeys(gone.servables, ""))
                    retired[name] = _newest(states, MAX_ENDED_VERSIONS)
                    log.info("model %s was removed from the config: unloaded", name)
                    if name in _gauge_models:
                        LATEST_VERSION.remove(name)
                        _gauge_models.discard(name)
            retired = dict(list(retired.items())[-MAX_RETIRED_MODELS:])
            self._publish(Registry(models, retired))
        fresh = [name for name in models if startup or name not in current.models]
        unavailable = [models[name] for name in fresh if not models[name].servables]
        if unavailable:
            details = ", ".join(
                f"{{name: {model.entry.name}}} due to error: "
                + (
                    "; ".join(f"version {v}: {error}" for v, (_, error) in sorted(model.failed.items()))
                    or f"no version under {model.entry.base_path} (numeric directories with a saved_model.pb)"
                )
                for model in unavailable
            )
            raise Unknown(f"{len(unavailable)} model(s) did not become available: {{{details}}}")

    def _check_labels(self, entries: list[ModelEntry], current: Registry) -> None:
        for entry in entries:
            previous = current.models.get(entry.name)
            serving = previous.servables if previous else {}
            old_labels = previous.entry.labels if previous else {}
            for label, version in sorted(entry.labels.items()):
                # The flag admits a new label, or one kept on its version, never one moved to an unavailable one.
                allowed = (
                    self.settings.allow_version_labels_for_unavailable_models
                    and old_labels.get(label, version) == version
                )
                if not allowed and version not in serving:
                    raise FailedPrecondition(
                        f"Request to assign label to version {version} of model {entry.name}, which is not "
                        "currently available for inference"
                    )

    def _sync(self, previous: ModelVersions, entry: ModelEntry, warmup: bool) -> ModelVersions:
        """Load the versions the policy aspires to, unload the rest, as TF Serving's
        AvailabilityPreservingPolicy does: until an aspired version is AVAILABLE the highest version that
        served before keeps serving (a broken new version does not take the model down)."""
        on_disk = version_dirs(entry.base_path)
        aspired = entry.policy.aspired(on_disk)
        servables = {v: s for v, s in previous.servables.items() if v in aspired}
        failed = {v: f for v, f in previous.failed.items() if v in aspired}
        for version in sorted(aspired - set(servables), reverse=True):
            path = on_disk[version]
            mtime = (path / "saved_model.pb").stat().st_mtime
            if failed.get(version, (None,))[0] == mtime:
                continue
            try:
                servable = Servable(entry.name, version, path)
                if warmup:
                    replay_warmup(servable)
            except Exception as exc:  # a broken version is reported in the status, others keep serving
                log.exception("%s version %d failed to load", entry.name, version)
                failed[version] = (mtime, f"{type(exc).__name__}: {exc}")
                VERSION_LOADS.labels(entry.name, "failed").inc()
                continue
            failed.pop(version, None)
            servables[version] = servable
            VERSION_LOADS.labels(entry.name, "loaded").inc()
            log.info("%s version %d is available (%s)", entry.name, version, path)
        if aspired and not servables:
            kept = [v for v in previous.servables if v not in aspired and v in on_disk]
            if kept:
                servables[max(kept)] = previous.servables[max(kept)]
        ended = dict(previous.ended)
        for version in set(previous.servables) - set(servables):
            log.info("%s version %d unloaded", entry.name, version)
            ended[version] = ""
        for version, (_, error) in previous.failed.items():
            if version not in failed and version not in servables:
                ended[version] = error
        for version in (*servables, *failed):
            ended.pop(version, None)
        return ModelVersions(entry, servables, failed, _newest(ended, MAX_ENDED_VERSIONS))

    def scan(self, warmup: bool) -> None:
        """Rescan every model's base path (TF Serving's --file_system_poll_wait_seconds)."""
        with self._scan_lock:
            current = self._registry
            models = {name: self._sync(model, model.entry, warmup) for name, model in current.models.items()}
            self._publish(Registry(models, current.retired))

    def _publish(self, registry: Registry) -> None:
        self._registry = registry
        for name, model in registry.models.items():
            if model.servables:
                LATEST_VERSION.labels(name).set(max(model.servables))
                _gauge_models.add(name)

    def _poll_versions(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            try:
                self.scan(warmup=self.settings.warmup)
            except Exception:
                log.exception("scanning the model directories failed")

    def _poll_config_file(self) -> None:
        """--model_config_file_poll_wait_seconds: reread and apply the file; a bad file (an empty one, or a
        model with no loadable version, included) is logged and the config in force stays."""
        path = self.settings.model_config_file
        while not self._stop.wait(self.settings.model_config_file_poll_wait_seconds):
            try:
                config = read_config_file(path, MAX_CONFIG_FILE_BYTES)
                check_reload(model_entries(config, self.settings.max_models), root=None)
                self.reload(config)
            except ServiceError as exc:
                log.error("reloading %s failed: %s", path, exc.message)
            except Exception:
                log.exception("reloading %s failed", path)

    # -- lookups --------------------------------------------------------------------------------

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """ServerCore::GetServableHandle: a label resolves to its version first."""
        model = self._registry.models.get(name)
        if label is not None:
            labels = model.entry.labels if model else {}
            if label not in labels:
                # TF Serving echoes the label; a megabyte one is cut short (it travels in a status header).
                shown = label if len(label) <= 200 else label[:200] + "..."
                raise InvalidArgument(f"Unrecognized servable version label: {shown}")
            version = labels[label]
        servables = model.servables if model else {}
        if not servables:
            raise servable_not_found(name, version)
        if version is None:
            return servables[max(servables)]
        if version not in servables:
            raise servable_not_found(name, version)
        return servables[version]

    def version_states(self, name: str, version: int | None = None) -> list[VersionState]:
        """What GetModelStatus reports, highest version first (TF Serving's order)."""
        registry = self._registry
        model = registry.models.get(name)
        ended = model.ended if model else registry.retired.get(name, {})
        states = {v: VersionState(v, False, error) for v, error in ended.items()}
        if model:
            states.update({v: VersionState(v, False, error) for v, (_, error) in model.failed.items()})
            states.update({v: VersionState(v, True) for v in model.servables})
        if version is not None:
            if version not in states:
                raise NotFound(f"Could not find version {version} of model {name}")
            return [states[version]]
        if not states:
            raise NotFound(f"Could not find any versions of model {name}")
        return [states[v] for v in sorted(states, reverse=True)]

    def available_versions(self) -> dict[str, list[int]]:
        return {name: sorted(model.servables) for name, model in self._registry.models.items()}

    # -- prediction -----------------------------------------------------------------------------

    def predict_batch(self, works: list[Work]) -> list[dict[str, np.ndarray] | Exception]:
        """Requests sharing a batch key run as one signature call on their concatenated inputs."""
        live = [not work.cancelled for work in works]  # skip requests whose client already gave up
        answers = iter(self._predict([work.payload for work, keep in zip(works, live, strict=True) if keep]))
        return [next(answers) if keep else Cancelled("the client stopped waiting") for keep in live]

    def _predict(self, jobs: list[PredictJob]) -> list[dict[str, np.ndarray] | Exception]:
        if len(jobs) > 1 and all(job.rows for job in jobs):
            merged = {key: np.concatenate([job.inputs[key] for job in jobs]) for key in jobs[0].inputs}
            total = sum(job.rows for job in jobs)
            try:
                outputs = self._run(jobs[0], merged, total)
            except InvalidArgument:
                # One bad image fails the whole merged call: re-run one by one so only its sender fails.
                BATCH_FALLBACKS.labels(jobs[0].servable.name).inc()
            else:
                # Outputs without a per-row leading dimension cannot be split: then each request runs alone.
                if all(value.ndim and value.shape[0] == total for value in outputs.values()):
                    results, offset = [], 0
                    for job in jobs:
                        part = {key: value[offset : offset + job.rows] for key, value in outputs.items()}
                        results.append(job.select(part))
                        offset += job.rows
                    return results
        results: list[dict[str, np.ndarray] | Exception] = []
        for job in jobs:
            try:
                results.append(job.select(self._run(job, job.inputs, job.rows or 1)))
            except ServiceError as exc:
                results.append(exc)
        return results

    def _run(self, job: PredictJob, inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        servable, signature = job.servable, job.signature
        MODEL_CALLS.labels(servable.name, signature.name).inc()
        outputs = signature.run(inputs)
        PREDICTED_ROWS.labels(servable.name, str(servable.version), signature.name).inc(rows)
        return outputs
