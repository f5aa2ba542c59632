"""SavedModel servables in TF Serving's layout: load every version, replay the warm-up records, pick up
new versions by polling, and run a signature on batches merged across requests. No web code.

Any SavedModel works (the ViT export, a test's half_plus_three); the ViT specifics live in the model's
own signatures. Versions are numeric directories under ``<model_base>/<model_name>`` holding a
``saved_model.pb``; all of them are served (TF Serving's ``model_version_policy { all {} }``) and
requests without a version get the highest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from prometheus_client import Counter, Gauge
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from services.kit.batcher import Work
from services.kit.errors import Cancelled, InvalidArgument, NotFound, ServiceError

from .settings import VitSettings

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
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


def configure_tensorflow(settings: VitSettings) -> None:
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


def tf_error(exc: tf.errors.OpError) -> ServiceError:
    """A TensorFlow runtime error as the client should read it (without the graph-internal noise)."""
    kept, in_trace = [], False
    # Eager calls wrap the kernel's message in "Graph execution error:", "Detected at node ...", a
    # Python trace and a "[[{{node ...}}]] [Op:...]" suffix; TF Serving clients get the kernel message.
    for line in exc.message.splitlines():
        stripped = line.strip()
        if not stripped or stripped == "Graph execution error:" or stripped.startswith("[[{{node"):
            continue
        if stripped.startswith("Detected at node"):
            in_trace = True
            continue
        if in_trace and (line.startswith("  ") or stripped == "<stack traces unavailable>"):
            continue
        in_trace = False
        kept.append(stripped)
    message = " ".join(kept) or exc.message
    if isinstance(exc, tf.errors.InvalidArgumentError | tf.errors.OutOfRangeError):
        return InvalidArgument(message)
    return ServiceError(message)


def servable_not_found(name: str, version: int | None) -> NotFound:
    request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return NotFound(f"Servable not found for request: {request}")


@dataclass(frozen=True)
class Signature:
    name: str
    function: Any  # the SavedModel's ConcreteFunction
    inputs: dict[str, tf.TensorSpec]
    outputs: dict[str, tf.TensorSpec]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.function(**{key: tf.constant(value) for key, value in inputs.items()})
        except tf.errors.OpError as exc:
            raise tf_error(exc) from None
        return {key: value.numpy() for key, value in outputs.items()}


class Servable:
    """One loaded version: its callable signatures and the SignatureDefs TF Serving reports as metadata."""

    def __init__(self, name: str, version: int, path: Path):
        self.name = name
        self.version = version
        self.path = path
        self._loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        self.signatures = {
            key: Signature(key, fn, dict(fn.structured_input_signature[1]), dict(fn.structured_outputs))
            for key, fn in self._loaded.signatures.items()
        }
        saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        meta_graph = next(
            (m for m in saved_model.meta_graphs if SERVE_TAG in m.meta_info_def.tags),
            saved_model.meta_graphs[0],
        )
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)

    def warmup(self) -> int:
        """Replay assets.extra/tf_serving_warmup_requests as TF Serving's --enable_model_warmup does."""
        records = self.path / WARMUP_FILE
        if not records.exists():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(records)).as_numpy_iterator():
            entry = prediction_log_pb2.PredictionLog.FromString(record)
            if not entry.HasField("predict_log"):
                continue
            request = entry.predict_log.request
            signature = self.signatures[request.model_spec.signature_name or DEFAULT_SIGNATURE]
            signature.run({key: tf.make_ndarray(proto) for key, proto in request.inputs.items()})
            count += 1
        return count


@dataclass(frozen=True, eq=False)
class PredictJob:
    """One Predict request, validated against its signature."""

    servable: Servable
    signature: Signature
    inputs: dict[str, np.ndarray]
    output_filter: tuple[str, ...] = ()

    @property
    def rows(self) -> int | None:
        """The shared leading (batch) dimension, or None when the inputs have none to merge along."""
        sizes = {value.shape[0] if value.ndim else None for value in self.inputs.values()}
        size = sizes.pop() if len(sizes) == 1 else None
        return size or None

    @property
    def cost(self) -> int:
        """What the batcher budgets a request in: its rows (each becomes a full-size image in the graph)."""
        return self.rows or 1

    @property
    def nbytes(self) -> int:
        return sum(
            sum(len(item) for item in value.ravel()) if value.dtype == object else value.nbytes
            for value in self.inputs.values()
        )

    @property
    def batch_key(self) -> tuple:
        """Requests merge only when every input agrees in dtype and in all dimensions but the first."""
        shapes = tuple(sorted((key, value.dtype.str, value.shape[1:]) for key, value in self.inputs.items()))
        alone = () if self.rows else (id(self),)
        return (self.servable.name, self.servable.version, self.signature.name, shapes, *alone)

    def select(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.output_filter or sorted(outputs)
        return {name: outputs[name] for name in names}


def validate_inputs(signature: Signature, inputs: dict[str, np.ndarray]) -> None:
    """The checks TF Serving makes before running a signature (its messages where it has them)."""
    validate_declared(
        signature,
        {
            key: (tf.as_dtype(value.dtype) if value.dtype != object else tf.string, list(value.shape))
            for key, value in inputs.items()
        },
    )


def validate_declared(signature: Signature, inputs: dict[str, tuple[tf.DType, list[int]]]) -> None:
    """validate_inputs on what the request declares (dtype, shape), before any tensor exists."""
    expected, sent = set(signature.inputs), set(inputs)
    if len(sent) != len(expected):
        raise InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
        )
    for index, (key, (dtype, shape)) in enumerate(sorted(inputs.items())):
        spec = signature.inputs.get(key)
        if spec is None:
            raise InvalidArgument(
                f"input tensor alias not found in signature: {key}. "
                f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}."
            )
        if dtype != spec.dtype:
            raise InvalidArgument(
                f"Expects arg[{index}] to be {spec.dtype.name} but {dtype.name} is provided"
            )
        if not spec.shape.is_compatible_with(shape):
            raise InvalidArgument(
                f"input {key}: shape {shape} is not compatible with the signature's "
                f"{spec.shape.as_list() if spec.shape.rank is not None else 'shape'} (None = any size)"
            )


def validate_output_filter(signature: Signature, output_filter: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in signature.outputs:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} "
                f"Outputs expected to be in the set {{{','.join(sorted(signature.outputs))}}}."
            )
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return tuple(output_filter)


@dataclass(frozen=True)
class VersionState:
    version: int
    available: bool
    error: str = ""


@dataclass(frozen=True)
class Versions:
    """What the poller found, published as one object: the event loop reads a snapshot that no thread
    mutates (the poller builds the next one and swaps the reference), so loaded and failed versions are
    always seen together and never change under an iteration."""

    servables: dict[int, Servable] = field(default_factory=dict)
    failed: dict[int, tuple[float, str]] = field(default_factory=dict)  # version -> (saved_model.pb mtime, error)


class VitRunner:
    """All versions of one model, kept in sync with the model directory."""

    def __init__(self, settings: VitSettings):
        self.settings = settings
        self.name = settings.model_name
        self.model_dir = Path(settings.model_base) / settings.model_name
        self._versions = Versions()  # replaced whole, never mutated: readers need no lock
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def load(self) -> None:
        configure_tensorflow(self.settings)
        if not self._version_dirs() and self.settings.checkpoint:
            self._export_checkpoint()
        self.scan(warmup=False)
        if not self._versions.servables:
            raise RuntimeError(
                f"no loadable version under {self.model_dir} (numeric directories with a saved_model.pb); "
                "set VIT_CHECKPOINT to export one at start-up"
            )
        if self.settings.poll_interval_s > 0:
            self._poller = threading.Thread(target=self._poll, name="vit-version-poll", daemon=True)
            self._poller.start()

    def warmup(self) -> None:
        for servable in self._versions.servables.values():
            log.info(
                "%s version %d: replayed %d warm-up requests", self.name, servable.version, servable.warmup()
            )

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)

    def _export_checkpoint(self) -> None:
        from .export import export_saved_model  # keras-hub is needed only here, not to serve

        log.info("%s has no version yet: exporting %s", self.model_dir, self.settings.checkpoint)
        export_saved_model(self.settings.checkpoint, Path(self.settings.model_base), self.name)

    # -- versions -------------------------------------------------------------------------------

    def _version_dirs(self) -> dict[int, Path]:
        if not self.model_dir.is_dir():
            return {}
        return {
            int(path.name): path
            for path in self.model_dir.iterdir()
            if path.name.isdigit() and (path / "saved_model.pb").is_file()
        }

    def scan(self, warmup: bool) -> None:
        """Load versions that appeared, drop versions whose directory went away (TF Serving's poll)."""
        with self._scan_lock:
            current = self._versions
            on_disk = self._version_dirs()
            servables = {v: s for v, s in current.servables.items() if v in on_disk}
            failed = {v: f for v, f in current.failed.items() if v in on_disk}
            for version, path in sorted(on_disk.items()):
                mtime = (path / "saved_model.pb").stat().st_mtime
                if version in servables or failed.get(version, (None,))[0] == mtime:
                    continue
                try:
                    servable = Servable(self.name, version, path)
                    if warmup:
                        servable.warmup()
                except Exception as exc:  # a broken version is reported in the status, others keep serving
                    log.exception("%s version %d failed to load", self.name, version)
                    failed[version] = (mtime, f"{type(exc).__name__}: {exc}")
                    VERSION_LOADS.labels(self.name, "failed").inc()
                    continue
                failed.pop(version, None)
                servables[version] = servable
                VERSION_LOADS.labels(self.name, "loaded").inc()
                log.info("%s version %d is available (%s)", self.name, version, path)
            for version in set(current.servables) - set(servables):
                log.info("%s version %d was removed from disk: unloaded", self.name, version)
            self._versions = Versions(servables, failed)
            if servables:
                LATEST_VERSION.labels(self.name).set(max(servables))

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.poll_interval_s):
            try:
                self.scan(warmup=self.settings.warmup)
            except Exception:
                log.exception("scanning %s failed", self.model_dir)

    def servable(self, name: str, version: int | None = None) -> Servable:
        servables = self._versions.servables
        if name != self.name or not servables:
            raise servable_not_found(name, version)
        if version is None:
            return servables[max(servables)]
        if version not in servables:
            raise servable_not_found(name, version)
        return servables[version]

    def version_states(self, name: str, version: int | None = None) -> list[VersionState]:
        """What GetModelStatus reports, highest version first (TF Serving's order)."""
        states: dict[int, VersionState] = {}
        if name == self.name:
            versions = self._versions
            states.update({v: VersionState(v, False, error) for v, (_, error) in versions.failed.items()})
            states.update({v: VersionState(v, True) for v in versions.servables})
        if version is not None:
            if version not in states:
                raise NotFound(f"Could not find version {version} of model {name}")
            return [states[version]]
        if not states:
            raise NotFound(f"Could not find any versions of model {name}")
        return [states[v] for v in sorted(states, reverse=True)]

    def available_versions(self) -> list[int]:
        return sorted(self._versions.servables)

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
                BATCH_FALLBACKS.labels(self.name).inc()
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
